//! [`ConfigError`]: what is wrong, and where: file, line and dotted key, or the flag.

/// Where a configuration problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    /// Nothing more precise than the origin.
    Whole,
    /// A key in the file, dotted, array elements as `[i]` (e.g. `route[1].group`).
    Key(String),
    /// A command-line flag (e.g. `--upstream`).
    Flag(&'static str),
}

/// A configuration problem, naming the file, line and key (or flag) it concerns.
///
/// Displays as `FILE:LINE: key `a.b.c`: what is wrong`, or `command line: flag `--x`: ...`
/// for flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    line: Option<usize>,
    subject: Subject,
    message: String,
}

impl ConfigError {
    pub(super) fn key(
        origin: &str,
        line: Option<usize>,
        key: impl Into<String>,
        message: String,
    ) -> Self {
        ConfigError {
            origin: origin.to_string(),
            line,
            subject: Subject::Key(key.into()),
            message,
        }
    }

    pub(super) fn flag(flag: &'static str, message: String) -> Self {
        ConfigError {
            origin: "command line".to_string(),
            line: None,
            subject: Subject::Flag(flag),
            message,
        }
    }

    pub(super) fn whole(origin: &str, line: Option<usize>, message: String) -> Self {
        ConfigError {
            origin: origin.to_string(),
            line,
            subject: Subject::Whole,
            message,
        }
    }

    /// The file name (or `command line`) the problem is in.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The dotted key (`route[0].group`) or flag (`--upstream`) concerned, when known.
    pub fn subject(&self) -> Option<&str> {
        match &self.subject {
            Subject::Whole => None,
            Subject::Key(k) => Some(k),
            Subject::Flag(f) => Some(f),
        }
    }

    /// What is wrong, without location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match &self.subject {
            Subject::Whole => {}
            Subject::Key(k) => write!(f, ": key `{k}`")?,
            Subject::Flag(flag) => write!(f, ": flag `{flag}`")?,
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
