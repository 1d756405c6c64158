//! Load errors: what was wrong and where (file, line and column, entry, field).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadError {
    /// The file, as a path relative to the project directory when it is inside it.
    pub file: Option<String>,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub entry: Option<String>,
    /// Dotted path of the field inside the entry (`host.workers`, `lifecycle.restart.delay`).
    pub field: Option<String>,
    pub message: String,
}

impl LoadError {
    pub fn new(message: impl Into<String>) -> LoadError {
        LoadError { message: message.into(), ..LoadError::default() }
    }
    pub fn file(mut self, f: impl Into<String>) -> LoadError {
        self.file = Some(f.into());
        self
    }
    pub fn at(mut self, line: u64, column: u64) -> LoadError {
        self.line = Some(line);
        self.column = Some(column).filter(|c| *c > 0);
        self
    }
    pub fn entry(mut self, id: impl Into<String>) -> LoadError {
        self.entry = Some(id.into());
        self
    }
    pub fn field(mut self, f: impl Into<String>) -> LoadError {
        self.field = Some(f.into());
        self
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            f.write_str(file)?;
            if let Some(l) = self.line {
                write!(f, ":{l}")?;
                if let Some(c) = self.column {
                    write!(f, ":{c}")?;
                }
            }
            f.write_str(": ")?;
        }
        match (&self.entry, &self.field) {
            (Some(e), Some(x)) => write!(f, "entry {e}, field {x}: ")?,
            (Some(e), None) => write!(f, "entry {e}: ")?,
            (None, Some(x)) => write!(f, "field {x}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// Every error a load found (a load reports them all, then nothing starts).
#[derive(Debug, Clone, Default)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

impl From<LoadError> for LoadErrors {
    fn from(e: LoadError) -> LoadErrors {
        LoadErrors(vec![e])
    }
}

/// User input as a load error repeats it: at most `max` characters, then "… (N bytes)".
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}… ({} bytes)", &s[..cut], s.len())),
    }
}
