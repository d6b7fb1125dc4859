//! Hostile fixture: `check` allocates and touches memory until allocation fails. The host
//! must stop it at its memory cap and say so.

use pgferry_sdk::*;

#[derive(Default)]
pub struct Hog;

impl Rule for Hog {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("hog", "Allocates without end")
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Non-zero fill so every page is really written, not merely reserved.
            let chunk = vec![(hoard.len() as u8) | 1; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

export_rules!(Hog);
