//! Invariant files: YAML schema, validation with positions, and generated docs.
//!
//! [`load_files`] and [`parse_str`] turn invariant files into a validated
//! [`InvariantSet`] (the types in [`spec`]), or into [`ConfigErrors`] naming every
//! problem as `file:line:column: field.path: message`. [`markdown_docs`] renders a set as
//! a reference page. The file format is described in `docs/invariant-file.md`.

mod docs;
mod duration;
mod error;
pub mod load;
mod selector;
pub mod spec;
mod yaml;

pub use docs::markdown_docs;
pub use error::{ConfigError, ConfigErrors};
pub use load::{FileContents, load_files, parse_str};
pub use spec::*;
