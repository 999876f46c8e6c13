//! The domain module's error boundary: invalid specs, unreadable XML, bad JSON.
//!
//! Owns the messages operators see from `csagent domain render|parse` and from
//! StartVm; it must not format XML or decide policy.

use std::fmt;

/// One problem with one field of a VM spec, e.g. `disks[1].target: duplicate target "vda"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field in the spec, in proto field names (`interfaces[0].mac`).
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Joins field errors one per line for the error message.
struct Lines<'a>(&'a [FieldError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The spec was rejected before any XML was produced; fix the listed fields.
    #[error("invalid VM spec: {}", Lines(.0))]
    Invalid(Vec<FieldError>),
    /// The VM spec JSON could not be read as a proto VmSpec.
    #[error("VM spec is not valid JSON for csagent.v1.VmSpec: {0}")]
    Json(#[from] serde_json::Error),
    /// The domain XML is not well-formed or lacks what every domain has.
    #[error("cannot read domain XML at byte {position}: {reason}")]
    Xml { position: u64, reason: String },
    /// Writing into the in-memory buffer failed (cannot happen with Vec, kept
    /// so the writer's io::Result is handled rather than unwrapped).
    #[error("rendering domain XML failed: {0}")]
    Render(#[from] std::io::Error),
}

impl DomainError {
    /// The field errors when the spec was invalid, else empty.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            DomainError::Invalid(v) => v,
            _ => &[],
        }
    }
}

/// Collects field errors so one pass reports every problem at once.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub fn finish(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.0))
        }
    }
}
