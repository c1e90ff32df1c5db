//! A position-carrying YAML tree for invariant files.
//!
//! serde-saphyr parses the text into a generic tree of [`Node`]s, each with the line and
//! column it came from. Validation then walks this tree by hand instead of deriving
//! `Deserialize` for the schema: a derived deserializer stops at the first problem, while
//! the walker reports every problem at once, each at its own position.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, MessageFormatter, NonFiniteFloatPolicy, Spanned};

/// One YAML node with the position it was referenced at.
pub(super) type Node = Spanned<Value>;

/// A YAML value as read, before any schema is applied.
#[derive(Debug)]
pub(super) enum Value {
    /// `~`, `null` or nothing at all.
    Null,
    /// `true` or `false` (YAML 1.2 spellings only).
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number, including integers too large for `i64`; may be NaN or infinite.
    Float(f64),
    /// A string scalar.
    String(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order; duplicate keys are kept so the walker can name them.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What kind of value this is, with an article, for "expected X, found Y" messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "an empty value",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        // Integers beyond i64 cannot be valid for any field; keep them as numbers so the
        // range check names them instead of the parser failing the whole file.
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_char<E>(self, v: char) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::String(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Node, Node>()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Value, A::Error> {
        Err(de::Error::custom(
            "tagged values are not supported in invariant files",
        ))
    }
}

/// A problem that makes the whole text unreadable as one YAML document.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// 1-based line; 1 when the parser gave no position.
    pub line: u64,
    /// 1-based column; 1 when the parser gave no position.
    pub column: u64,
    /// One-line description.
    pub message: String,
}

/// Parses `text` as exactly one YAML document into a [`Node`] tree.
///
/// The default budgets stay in force (they stop alias bombs and runaway nesting); only
/// the policies that would end parsing early for a problem validation can name
/// precisely are relaxed.
pub(super) fn parse_document(text: &str) -> Result<Node, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    // `yes`, `no`, `on` and `off` stay strings: `owner: no` must not become `false`.
    options.strict_booleans = true;
    // Duplicate keys and non-finite numbers are reported by the validator, next to all
    // other problems, instead of ending parsing at the first one.
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.non_finite_float_policy = NonFiniteFloatPolicy::PassThrough;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| syntax_error(&e))
}

fn syntax_error(error: &serde_saphyr::Error) -> SyntaxError {
    let (line, column) = error
        .location()
        .map(|l| (l.line(), l.column()))
        .filter(|&(line, column)| line > 0 && column > 0)
        .unwrap_or((1, 1));
    let mut inner = error;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    let message = match inner {
        serde_saphyr::Error::MultipleDocuments { .. } => {
            "an invariant file holds exactly one YAML document; this starts a second one \
             (remove the `---` or split the file)"
                .to_string()
        }
        other => {
            let text = serde_saphyr::UserMessageFormatter.format_message(other);
            // The parser may quote control characters from the input; keep messages on
            // one line and printable.
            let printable: String = text
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            format!("invalid YAML: {printable}")
        }
    };
    SyntaxError {
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_entries(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }

    #[test]
    fn every_node_carries_its_position() {
        let node = parse_document("a: 1\nb:\n  - x: [1, \"y\"]\n").unwrap();
        assert_eq!((node.referenced.line(), node.referenced.column()), (1, 1));
        let entries = map_entries(&node);
        assert_eq!(
            (
                entries[0].1.referenced.line(),
                entries[0].1.referenced.column()
            ),
            (1, 4)
        );
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a list")
        };
        assert_eq!(
            (items[0].referenced.line(), items[0].referenced.column()),
            (3, 5)
        );
        let inner = map_entries(&items[0]);
        let Value::Seq(flow) = &inner[0].1.value else {
            panic!("not a list")
        };
        assert_eq!(
            (flow[1].referenced.line(), flow[1].referenced.column()),
            (3, 12)
        );
    }

    #[test]
    fn duplicate_keys_and_non_finite_numbers_reach_the_validator() {
        let node = parse_document("a: 1\na: .nan\n").unwrap();
        let entries = map_entries(&node);
        assert_eq!(entries.len(), 2);
        assert!(matches!(entries[1].1.value, Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let node = parse_document("a: no\nb: true\n").unwrap();
        let entries = map_entries(&node);
        assert!(matches!(&entries[0].1.value, Value::String(s) if s == "no"));
        assert!(matches!(entries[1].1.value, Value::Bool(true)));
    }

    #[test]
    fn huge_integers_become_floats() {
        let node = parse_document("a: 18446744073709551615\n").unwrap();
        assert!(matches!(map_entries(&node)[0].1.value, Value::Float(_)));
    }

    #[test]
    fn a_second_document_is_one_clear_error() {
        let err = parse_document("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1));
        assert!(
            err.message.contains("exactly one YAML document"),
            "{}",
            err.message
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse_document("a: [1, 2\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 4));
        assert_eq!(err.message, "invalid YAML: unclosed bracket '['");
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        let mut text = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for (name, prev) in [
            ("b", "a"),
            ("c", "b"),
            ("d", "c"),
            ("e", "d"),
            ("f", "e"),
            ("g", "f"),
        ] {
            let refs = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        text.push_str(&format!("h: [{}]\n", ["*g"; 9].join(",")));
        let err = parse_document(&text).unwrap_err();
        assert!(
            err.message.contains("too large or too complex"),
            "{}",
            err.message
        );
    }

    #[test]
    fn deep_nesting_hits_the_budget_not_the_stack() {
        let text = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let err = parse_document(&text).unwrap_err();
        assert!(err.message.starts_with("invalid YAML: "), "{}", err.message);
    }
}
