//! Building findings tersely: `error("code", "message").on("public.t").fix("ALTER …")`.

use crate::{Finding, Severity};

fn finding(severity: Severity, code: &str, message: impl Into<String>) -> Finding {
    Finding { severity, code: code.into(), message: message.into(), object: None, remediation: None }
}

/// A finding that blocks the migration.
pub fn error(code: &str, message: impl Into<String>) -> Finding {
    finding(Severity::Error, code, message)
}

/// A finding the user should read; the migration may go on.
pub fn warning(code: &str, message: impl Into<String>) -> Finding {
    finding(Severity::Warning, code, message)
}

pub fn info(code: &str, message: impl Into<String>) -> Finding {
    finding(Severity::Info, code, message)
}

impl Finding {
    /// Names the object the finding is about.
    pub fn on(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }
    /// Says what the user can do about it.
    pub fn fix(mut self, remediation: impl Into<String>) -> Self {
        self.remediation = Some(remediation.into());
        self
    }
}
