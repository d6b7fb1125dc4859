//! Small helpers for tests: the shared corpus and skipping optional tests.
//!
//! Why skip instead of fail: some inputs (the shared corpus, extra PostgreSQL versions)
//! are optional on a developer machine; a test without them says so loudly on stderr
//! (`SKIPPED: …`) and passes, rather than failing for a reason unrelated to the code.

use std::path::PathBuf;

/// The shared test corpus: `$PGFERRY_CORPUS` when set, else `<workspace>/../shared/corpus`;
/// `None` when that directory does not exist.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PGFERRY_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => crate::workspace_root()
            .join("..")
            .join("shared")
            .join("corpus"),
    };
    let dir = dir.canonicalize().ok()?;
    dir.is_dir().then_some(dir)
}

/// What a skipped test returns: `()` or `Ok(())`, so [`skip!`](crate::skip) works in
/// both kinds of test functions.
pub trait SkipReturn {
    fn skipped() -> Self;
}

impl SkipReturn for () {
    fn skipped() -> Self {}
}

impl<E> SkipReturn for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Prints `SKIPPED: <reason>` (with the test's module path) to stderr.
pub fn print_skipped(location: &str, reason: &str) {
    eprintln!("SKIPPED: {reason} ({location})");
}

/// Skips the current test: prints `SKIPPED: <reason>` to stderr and returns `()` or
/// `Ok(())`. Takes `format!` arguments.
///
/// ```ignore
/// if !pgferry_tests::pg_available(16) { skip!("PostgreSQL 16 is not installed"); }
/// ```
#[macro_export]
macro_rules! skip {
    ($($arg:tt)+) => {{
        $crate::support::print_skipped(
            concat!(module_path!(), " at ", file!(), ":", line!()),
            &format!($($arg)+),
        );
        return $crate::support::SkipReturn::skipped();
    }};
}

/// Unwraps an `Option`, or skips the test with the reason when it is `None`.
///
/// ```ignore
/// let corpus = require!(pgferry_tests::corpus_dir(), "shared corpus not found");
/// ```
#[macro_export]
macro_rules! require {
    ($opt:expr, $($arg:tt)+) => {
        match $opt {
            Some(v) => v,
            None => $crate::skip!($($arg)+),
        }
    };
}
