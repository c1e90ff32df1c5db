//! Errors found in invariant files.
//!
//! Loading never stops at the first problem: every problem becomes one [`ConfigError`]
//! naming the file, the position and the field, and they are returned together as
//! [`ConfigErrors`] so a user can fix them all in one pass.

use std::fmt;

/// One problem in an invariant file.
///
/// Displays as `file:line:column: path: message`, the form editors and CI annotations
/// understand. The path is left out for problems with the file as a whole, and the
/// position when there is none (a file that cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was named to the loader.
    pub file: String,
    /// 1-based line; 0 when the problem has no position in the file.
    pub line: u64,
    /// 1-based column (in characters); 0 when the problem has no position.
    pub column: u64,
    /// Field path such as `invariants[2].probe.http.url`; empty for whole-file problems.
    pub path: String,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.file.is_empty() || self.line > 0 {
            f.write_str(": ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found while loading invariant files, sorted by file, line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// Sorts by file, line and column; problems at one position keep the order found.
    pub(super) fn sorted(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        ConfigErrors(errors)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.0 {
            writeln!(f, "{error}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in invariant files",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(file: &str, line: u64, column: u64, path: &str, message: &str) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line,
            column,
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    #[test]
    fn display_is_file_line_column_path_message() {
        let e = error("f.yaml", 3, 7, "invariants[0].name", "is wrong");
        assert_eq!(e.to_string(), "f.yaml:3:7: invariants[0].name: is wrong");
    }

    #[test]
    fn display_leaves_out_an_empty_path() {
        let e = error("f.yaml", 1, 1, "", "invalid YAML: oops");
        assert_eq!(e.to_string(), "f.yaml:1:1: invalid YAML: oops");
    }

    #[test]
    fn display_leaves_out_a_missing_position() {
        let e = error("missing.yaml", 0, 0, "", "cannot read: not found");
        assert_eq!(e.to_string(), "missing.yaml: cannot read: not found");
    }

    #[test]
    fn errors_are_sorted_and_counted() {
        let errors = ConfigErrors::sorted(vec![
            error("b.yaml", 1, 1, "", "third"),
            error("a.yaml", 2, 1, "x", "second"),
            error("a.yaml", 1, 9, "y", "first"),
        ]);
        assert_eq!(
            errors.to_string(),
            "a.yaml:1:9: y: first\na.yaml:2:1: x: second\nb.yaml:1:1: third\n3 errors in invariant files"
        );
        let one = ConfigErrors(vec![error("a.yaml", 1, 1, "", "only")]);
        assert_eq!(
            one.to_string(),
            "a.yaml:1:1: only\n1 error in invariant files"
        );
    }
}
