//! The runtime's error value: a kind from the SPEC §5 list, a message, `retryable`, details.
//!
//! The same type is what a failed operation returns, what an abnormal exit carries, and what
//! an error object in a message payload is. It never holds anything process-local.

use std::fmt;
use std::sync::Arc;

use crate::value::Value;

/// Error kinds, with the exact strings Wippy uses (`errors.NOT_FOUND == "NotFound"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Invalid,
    PermissionDenied,
    Unavailable,
    Internal,
    Canceled,
    Conflict,
    Timeout,
    RateLimited,
    LimitExceeded,
    Unknown,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::Invalid,
        ErrorKind::PermissionDenied,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Canceled,
        ErrorKind::Conflict,
        ErrorKind::Timeout,
        ErrorKind::RateLimited,
        ErrorKind::LimitExceeded,
        ErrorKind::Unknown,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::Invalid => "Invalid",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Internal => "Internal",
            ErrorKind::Canceled => "Canceled",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::RateLimited => "RateLimited",
            ErrorKind::LimitExceeded => "LimitExceeded",
            ErrorKind::Unknown => "",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error. Cheap to clone when wrapped in an `Arc` (as `Value::Error` does).
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// `Some(true)`/`Some(false)` when known, `None` when the producer did not say.
    pub retryable: Option<bool>,
    pub details: Option<Value>,
    /// A kind outside the SPEC §5 list, as the code that made the error wrote it
    /// (`errors.new{kind = "QuotaExceeded"}`); `kind` is then `Unknown`. Wippy keeps any
    /// string as a kind, and so do we.
    pub custom_kind: Option<Arc<str>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), retryable: None, details: None, custom_kind: None }
    }
    /// An error whose kind is written as `kind`: one of the SPEC §5 kinds when it names one,
    /// else kept as a custom kind ("" is `Unknown`).
    pub fn with_kind_name(kind: &str, message: impl Into<String>) -> Error {
        let mut e = Error::new(ErrorKind::parse(kind).unwrap_or(ErrorKind::Unknown), message);
        if e.kind == ErrorKind::Unknown && !kind.is_empty() {
            e.custom_kind = Some(Arc::from(kind));
        }
        e
    }
    /// The kind as Lua sees it (`e:kind()`): the SPEC §5 string, or the custom kind.
    pub fn kind_str(&self) -> &str {
        match &self.custom_kind {
            Some(k) => k,
            None => self.kind.as_str(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, m)
    }
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, m)
    }
    pub fn limit_exceeded(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::LimitExceeded, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::AlreadyExists, m)
    }
    pub fn with_retryable(mut self, r: bool) -> Error {
        self.retryable = Some(r);
        self
    }
    pub fn with_details(mut self, d: Value) -> Error {
        self.details = Some(d);
        self
    }
    /// The "process terminated" exit of `terminate`.
    pub fn terminated() -> Error {
        Error::internal("process terminated").with_retryable(false)
    }
    /// The exit of a non-trapping process whose linked peer failed.
    pub fn linked_failed() -> Error {
        Error::internal("linked process failed").with_retryable(false)
    }
    pub fn process_not_found(dest: impl fmt::Display) -> Error {
        Error::not_found(format!("process not found: {}", Echo(&dest)))
    }
}

/// How much of a value from user input an error message repeats.
pub const ECHO_MAX: usize = 200;

/// User input as an error message repeats it: at most [`ECHO_MAX`] characters, then
/// "… (N bytes)", so a 1 MB name never makes a 1 MB message.
pub struct Echo<'a, T: fmt::Display + ?Sized>(pub &'a T);

impl<T: fmt::Display + ?Sized> fmt::Display for Echo<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        match text.char_indices().nth(ECHO_MAX) {
            None => f.write_str(&text),
            Some((cut, _)) => write!(f, "{}… ({} bytes)", &text[..cut], text.len()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for Value {
    fn from(e: Error) -> Value {
        Value::Error(Arc::new(e))
    }
}

/// The text a panic carried (its `&str` or `String` payload).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_cut() {
        assert_eq!(Echo("short").to_string(), "short");
        let long = "é".repeat(1000);
        let e = Echo(long.as_str()).to_string();
        assert!(e.starts_with(&"é".repeat(ECHO_MAX)) && e.ends_with("… (2000 bytes)"), "{e}");
    }

    #[test]
    fn kind_strings_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ErrorKind::Unknown.as_str(), "");
        assert_eq!(ErrorKind::parse("Nope"), None);
    }
}
