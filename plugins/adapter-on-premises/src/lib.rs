//! Source adapter for self-managed PostgreSQL: nothing is the provider's, every SSL mode
//! is allowed, and readiness remediation speaks of postgresql.conf and pg_hba.conf.

use pgferry_sdk::*;

#[derive(Default)]
pub struct OnPremises;

impl SourceAdapter for OnPremises {
    fn info(&self) -> AdapterInfo {
        AdapterInfo {
            ids: vec!["OnPremises".into()],
            display_name: "On-premises PostgreSQL".into(),
            allowed_ssl_modes: vec![SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull],
            preferred_ssl_mode: SslMode::Prefer,
        }
    }
}

export_adapter!(OnPremises);
