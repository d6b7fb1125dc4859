//! Control fixture: a rule that always answers one info finding `all-good`, used to show
//! the host still works after each hostile call.

use pgferry_sdk::*;

#[derive(Default)]
pub struct AllGood;

impl Rule for AllGood {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("all-good", "Always passes")
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        Ok(vec![info("all-good", "everything is fine")])
    }
}

export_rules!(AllGood);

#[cfg(test)]
mod tests {
    use super::*;
    use pgferry_sdk::testing::Fixture;

    #[test]
    fn answers_all_good() {
        let fx = Fixture::new();
        let f = fx.check(&AllGood, fx.context(MigrationMode::Offline, None)).unwrap();
        assert_eq!(f[0].code, "all-good");
    }
}
