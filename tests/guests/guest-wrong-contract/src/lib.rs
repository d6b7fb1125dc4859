//! Hostile fixture: a rule plugin built against contract `pgferry:plugin@0.3.0`, newer than
//! any this runner hosts. `wit/` is a copy of the 0.1.0 contract with only the package
//! version changed; the bindings come from wit-bindgen directly, not the SDK. The host must
//! refuse it with a message naming its version and the hosted ones.

wit_bindgen::generate!({
    path: "wit",
    world: "validation-rule",
});

use exports::pgferry::plugin::rules::{Guest, RuleDescriptor};
use pgferry::plugin::types::{CheckContext, Finding, Level, Severity};

pub struct Future;

impl Guest for Future {
    fn describe() -> Vec<RuleDescriptor> {
        vec![RuleDescriptor {
            id: "from-the-future".into(),
            title: "Built for contract 0.3.0".into(),
            level: Level::Instance,
            modes: vec![],
            source_types: vec![],
        }]
    }

    fn check(_rule_id: String, _ctx: CheckContext) -> Result<Vec<Finding>, String> {
        Ok(vec![Finding {
            severity: Severity::Info,
            code: "from-the-future".into(),
            message: "this should never run on a 0.1.x runner".into(),
            object: None,
            remediation: None,
        }])
    }
}

#[cfg(target_arch = "wasm32")]
export!(Future);
