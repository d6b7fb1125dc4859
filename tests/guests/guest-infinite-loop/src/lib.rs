//! Hostile fixture: `check` never returns. The host must stop it at its CPU deadline.

use pgferry_sdk::*;

#[derive(Default)]
pub struct Spin;

impl Rule for Spin {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("spin", "Loops forever")
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        let mut counter = 0u64;
        loop {
            // black_box keeps the optimiser from proving the loop pointless.
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

export_rules!(Spin);
