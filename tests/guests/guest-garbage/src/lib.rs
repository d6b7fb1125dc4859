//! Hostile fixture: returns values that do not fit the contract. The host must refuse them
//! while lifting them, as a "malformed value" error, instead of trusting them.
//!
//! - `describe` returns rule `bad-enum` whose `level` holds discriminant 7 (the enum has two
//!   cases), next to the well-formed rule `bad-utf8`;
//! - `check("bad-utf8")` returns a finding whose message is not UTF-8.
//!
//! Safe Rust cannot produce either, and neither can the SDK: this fixture forges them, which
//! is exactly what a buggy or malicious non-Rust guest can send.
//!
//! Why the bindings are wit-bindgen's own and `describe`'s export is hand-wrapped: building
//! the level with `transmute::<u8, Level>(7)` (or a volatile store) does not survive. A
//! two-case `#[repr(u8)]` enum is valid only as 0 or 1, so rustc treats it like a `bool` and
//! truncates it to one bit when the generated lowering reads it: the 7 reached the host as a
//! valid 1 (`database`). So `describe` here lets the generated code lower well-formed
//! descriptors and then overwrites the level byte of the first one in the lowered result,
//! after the last point where Rust could "fix" it. `check` goes through the generated
//! export unchanged: a string is lowered as pointer and length, unchecked, so an unchecked
//! `String` is enough.

wit_bindgen::generate!({
    path: "../../../wit/since_v0.1.0",
    world: "validation-rule",
});

use exports::pgferry::plugin::rules::{Guest, RuleDescriptor};
#[cfg(target_arch = "wasm32")]
use exports::pgferry::plugin::rules;
use pgferry::plugin::types::{CheckContext, Finding, Level, Severity};

pub struct Garbage;

impl Guest for Garbage {
    fn describe() -> Vec<RuleDescriptor> {
        let rule = |id: &str, title: &str| RuleDescriptor {
            id: id.into(),
            title: title.into(),
            level: Level::Instance,
            modes: vec![],
            source_types: vec![],
        };
        vec![rule("bad-enum", "Declares an impossible level"), rule("bad-utf8", "Returns a message that is not UTF-8")]
    }

    fn check(rule_id: String, _ctx: CheckContext) -> Result<Vec<Finding>, String> {
        if rule_id != "bad-utf8" {
            return Err(format!("this plugin has no checkable rule `{rule_id}`"));
        }
        // SAFETY: none; deliberately invalid (see the module comment).
        let message = unsafe { String::from_utf8_unchecked(vec![0xff, 0xfe, 0xfd]) };
        Ok(vec![Finding { severity: Severity::Info, code: "garbage".into(), message, object: None, remediation: None }])
    }
}

/// Canonical ABI layout (wasm32) of `rule-descriptor`: `id` and `title` (pointer + length,
/// 8 bytes each) come first, so the one-byte `level` is at offset 16.
#[cfg(target_arch = "wasm32")]
const LEVEL_OFFSET: usize = 16;

/// `describe`: the generated lowering writes the result list (pointer, length) into its
/// return area and returns the area's address; then the first descriptor's level is forged.
#[cfg(target_arch = "wasm32")]
#[unsafe(export_name = "pgferry:plugin/rules@0.1.0#describe")]
unsafe extern "C" fn export_describe() -> *mut u8 {
    unsafe {
        let area = rules::_export_describe_cabi::<Garbage>();
        let list = *area.cast::<*mut u8>();
        list.add(LEVEL_OFFSET).write_volatile(7);
        area
    }
}

/// `check`, as the generated export would do it.
#[cfg(target_arch = "wasm32")]
#[unsafe(export_name = "pgferry:plugin/rules@0.1.0#check")]
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn export_check(
    a0: *mut u8,
    a1: usize,
    a2: *mut u8,
    a3: usize,
    a4: i32,
    a5: i32,
    a6: *mut u8,
    a7: usize,
    a8: i32,
    a9: *mut u8,
    a10: usize,
    a11: *mut u8,
    a12: usize,
    a13: i32,
) -> *mut u8 {
    unsafe { rules::_export_check_cabi::<Garbage>(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13) }
}
