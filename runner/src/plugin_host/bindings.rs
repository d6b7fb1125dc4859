//! Host-side bindings, one module per contract version the runner hosts, and the runner's
//! own view of them: the inventory types (`types`, identical in 0.1.0 and 0.2.0, so 0.2.0
//! reuses 0.1.0's Rust types) double as the runner's inventory model and derive serde (an
//! inventory dump is an SDK test fixture); everything else the runner uses is the newest
//! version's, and an older component's answers are converted up to it here.
//! Only the types are public; the generated modules stay inside the plugin host.

pub(super) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "validation-rule",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });

    pub mod adapter {
        wasmtime::component::bindgen!({
            path: "../wit/since_v0.1.0",
            world: "source-adapter",
            imports: { default: async },
            exports: { default: async },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
            with: {
                "pgferry:plugin/types": super::pgferry::plugin::types,
                "pgferry:plugin/host": super::pgferry::plugin::host,
            },
        });
    }
}

pub(super) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "validation-rule",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "pgferry:plugin/types": super::v0_1::pgferry::plugin::types,
        },
    });

    pub mod adapter {
        wasmtime::component::bindgen!({
            path: "../wit/since_v0.2.0",
            world: "source-adapter",
            imports: { default: async },
            exports: { default: async },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
            with: {
                "pgferry:plugin/types": super::super::v0_1::pgferry::plugin::types,
                "pgferry:plugin/host": super::pgferry::plugin::host,
                "pgferry:plugin/manifest": super::pgferry::plugin::manifest,
            },
        });
    }
}

pub use v0_1::pgferry::plugin::types::*;
pub use v0_2::adapter::exports::pgferry::plugin::adapter::{AdapterInfo, ConnectionDetails, ProviderObjectNames};
pub use v0_2::exports::pgferry::plugin::rules::RuleDescriptor;
pub use v0_2::pgferry::plugin::host::{LogLevel, QueryResult};
pub use v0_2::pgferry::plugin::manifest::{Grant, PluginManifest, SettingSpec, SettingType};

/// 0.1.0's records, field for field the same as 0.2.0's: carried over to the runner's types.
mod from_v0_1 {
    use super::v0_1::adapter::exports::pgferry::plugin::adapter as a;
    use super::v0_1::exports::pgferry::plugin::rules as r;
    use super::v0_1::pgferry::plugin::host as h;
    use super::*;

    impl From<r::RuleDescriptor> for RuleDescriptor {
        fn from(d: r::RuleDescriptor) -> Self {
            RuleDescriptor { id: d.id, title: d.title, level: d.level, modes: d.modes, source_types: d.source_types }
        }
    }

    impl From<a::AdapterInfo> for AdapterInfo {
        fn from(i: a::AdapterInfo) -> Self {
            AdapterInfo {
                ids: i.ids,
                display_name: i.display_name,
                allowed_ssl_modes: i.allowed_ssl_modes,
                preferred_ssl_mode: i.preferred_ssl_mode,
                owned_codes: i.owned_codes,
            }
        }
    }

    impl From<a::ProviderObjectNames> for ProviderObjectNames {
        fn from(o: a::ProviderObjectNames) -> Self {
            ProviderObjectNames { databases: o.databases, roles: o.roles, schemas: o.schemas, extensions: o.extensions }
        }
    }

    impl From<a::ConnectionDetails> for ConnectionDetails {
        fn from(d: a::ConnectionDetails) -> Self {
            ConnectionDetails { host: d.host, port: d.port, user: d.user }
        }
    }

    impl From<&ConnectionDetails> for a::ConnectionDetails {
        fn from(d: &ConnectionDetails) -> Self {
            a::ConnectionDetails { host: d.host.clone(), port: d.port, user: d.user.clone() }
        }
    }

    impl From<h::LogLevel> for LogLevel {
        fn from(l: h::LogLevel) -> Self {
            match l {
                h::LogLevel::Trace => LogLevel::Trace,
                h::LogLevel::Debug => LogLevel::Debug,
                h::LogLevel::Info => LogLevel::Info,
                h::LogLevel::Warn => LogLevel::Warn,
                h::LogLevel::Error => LogLevel::Error,
            }
        }
    }

    impl From<QueryResult> for h::QueryResult {
        fn from(q: QueryResult) -> Self {
            h::QueryResult { columns: q.columns, rows: q.rows, truncated: q.truncated }
        }
    }
}
