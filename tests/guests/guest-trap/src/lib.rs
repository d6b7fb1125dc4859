//! Hostile fixture: `check` panics. The plugin profile has `panic = "abort"`, so the panic
//! becomes a wasm trap, which the host must report as such.

use pgferry_sdk::*;

#[derive(Default)]
pub struct Boom;

impl Rule for Boom {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("boom", "Panics")
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        // Printed output goes to the runner's log under the plugin's name, made printable,
        // and more than the host keeps is dropped without failing the guest.
        println!("guest-trap: about to panic \x1b[2J");
        println!("{}", "x".repeat(40 * 1024));
        panic!("guest-trap: deliberate panic in check()");
    }
}

export_rules!(Boom);
