//! Hostile fixture: returns values that do not fit the contract. The host must refuse them
//! while lifting them, as a "malformed value" error, instead of trusting them.
//!
//! Rule `bad-enum` describes itself with a `level` discriminant out of range (7; the enum
//! has two cases); rule `bad-utf8` returns a finding whose message is not UTF-8. Safe Rust
//! cannot produce either, so both are forged with `unsafe` — undefined behaviour inside the
//! guest on purpose, which is exactly what a buggy or malicious non-Rust guest can send.
//! `describe` covers both rules, so it fails as a whole; `check("bad-utf8")` still runs,
//! because the SDK matches the rule id without lowering any descriptor.

use pgferry_sdk::*;

#[derive(Default)]
pub struct BadEnum;

impl Rule for BadEnum {
    fn describe(&self) -> RuleDescriptor {
        let mut d = RuleDescriptor::instance("bad-enum", "Declares an impossible level");
        // SAFETY: none; deliberately invalid (see the module comment). `Level` is a
        // fieldless `#[repr(u8)]` enum, so its byte can be overwritten in place. Not
        // `transmute::<u8, Level>(7)`: the optimiser, entitled to assume a two-case enum is 0
        // or 1, turned that 7 into a valid `database` before it reached the host. A volatile
        // store it cannot see through keeps the 7 intact up to the lowering.
        unsafe { std::ptr::write_volatile((&raw mut d.level).cast::<u8>(), 7) };
        std::hint::black_box(d)
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        Ok(vec![])
    }
}

#[derive(Default)]
pub struct BadUtf8;

impl Rule for BadUtf8 {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("bad-utf8", "Returns a message that is not UTF-8")
    }

    fn check(&self, _cx: &Context) -> Result<Vec<Finding>, String> {
        // SAFETY: none; deliberately invalid (see the module comment).
        let message = unsafe { String::from_utf8_unchecked(vec![0xff, 0xfe, 0xfd]) };
        Ok(vec![info("garbage", message)])
    }
}

export_rules!(BadEnum, BadUtf8);
