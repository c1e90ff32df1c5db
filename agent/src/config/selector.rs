//! The `series` selector of metrics probes: a PromQL-style instant vector selector.
//!
//! `metric_name{label="v", label!="v", label=~"re", label!~"re"}`. Values may be quoted
//! with `"`, `'` or backticks (raw) as in PromQL; regexes are fully anchored, as in
//! PromQL, so `code=~"5.."` matches `500` but not `5000`.

use std::fmt;

use super::spec::{LabelMatcher, MetricSelector};

/// Why a selector does not parse, and where.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SelectorError {
    /// 1-based character position in the selector text.
    pub position: usize,
    /// What was expected there.
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid series selector at character {}: {}",
            self.position, self.message
        )
    }
}

/// Parses a selector such as `apiserver_request_total{verb="GET",code=~"5.."}`.
pub(super) fn parse_selector(text: &str) -> Result<MetricSelector, SelectorError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    p.skip_space();
    let metric = p.name(is_metric_start, is_metric_char);
    if metric.is_empty() {
        return Err(p.error(
            "expected a metric name (letters, digits, '_' and ':', not starting with a digit)",
        ));
    }
    p.skip_space();
    let mut matchers = Vec::new();
    if p.eat('{') {
        loop {
            p.skip_space();
            if p.eat('}') {
                break;
            }
            matchers.push(p.matcher()?);
            p.skip_space();
            if p.eat('}') {
                break;
            }
            if !p.eat(',') {
                return Err(p.error("expected ',' or '}' after a label matcher"));
            }
        }
        p.skip_space();
    }
    if let Some(c) = p.peek() {
        return Err(p.error(&format!("unexpected {c:?} after the selector")));
    }
    Ok(MetricSelector { metric, matchers })
}

/// One line from a regex compile error (the crate's own text spans several lines with a
/// caret diagram, which does not fit a `file:line:column:` message).
pub(super) fn regex_error_message(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Whether `name` is a valid Prometheus label name, as a selector's matchers take them.
pub(super) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_label_start) && chars.all(is_label_char)
}

fn is_metric_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_metric_char(c: char) -> bool {
    is_metric_start(c) || c.is_ascii_digit()
}

fn is_label_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_label_char(c: char) -> bool {
    is_label_start(c) || c.is_ascii_digit()
}

struct Parser {
    chars: Vec<char>,
    /// 0-based index of the next character.
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn error(&self, message: &str) -> SelectorError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, index: usize, message: &str) -> SelectorError {
        SelectorError {
            position: index + 1,
            message: message.to_string(),
        }
    }

    fn name(&mut self, start: fn(char) -> bool, rest: fn(char) -> bool) -> String {
        let mut out = String::new();
        if let Some(c) = self.peek().filter(|&c| start(c)) {
            out.push(c);
            self.pos += 1;
            while let Some(c) = self.peek().filter(|&c| rest(c)) {
                out.push(c);
                self.pos += 1;
            }
        }
        out
    }

    fn matcher(&mut self) -> Result<LabelMatcher, SelectorError> {
        let label = self.name(is_label_start, is_label_char);
        if label.is_empty() {
            return Err(self.error(
                "expected a label name (letters, digits and '_', not starting with a digit) or '}'",
            ));
        }
        self.skip_space();
        let op = if self.eat('=') {
            if self.eat('~') { "=~" } else { "=" }
        } else if self.eat('!') {
            if self.eat('=') {
                "!="
            } else if self.eat('~') {
                "!~"
            } else {
                return Err(self.error("expected '=' or '~' after '!'"));
            }
        } else {
            return Err(self.error(&format!(
                "expected =, !=, =~ or !~ after label name {label:?}"
            )));
        };
        self.skip_space();
        let value_start = self.pos;
        let value = self.quoted()?;
        let regex = |value: &str| {
            regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                self.error_at(
                    value_start,
                    &format!("invalid regex: {}", regex_error_message(&e)),
                )
            })
        };
        Ok(match op {
            "=" => LabelMatcher::Equal(label, value),
            "!=" => LabelMatcher::NotEqual(label, value),
            "=~" => LabelMatcher::Regex(label, regex(&value)?),
            _ => LabelMatcher::NotRegex(label, regex(&value)?),
        })
    }

    /// A `"…"` or `'…'` string with Go escapes, or a raw `` `…` `` string.
    fn quoted(&mut self) -> Result<String, SelectorError> {
        let start = self.pos;
        let quote = match self.peek() {
            Some(q @ ('"' | '\'' | '`')) => q,
            _ => {
                return Err(self.error("expected a quoted value (\"…\", '…' or `…`)"));
            }
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error_at(start, "quoted value is not closed"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c == '\\' && quote != '`' {
                out.push(self.escape(quote)?);
            } else if c == '\n' && quote != '`' {
                return Err(self.error_at(start, "quoted value is not closed on its line"));
            } else {
                out.push(c);
            }
        }
    }

    /// The character after a backslash (already consumed), as PromQL/Go read it.
    fn escape(&mut self, quote: char) -> Result<char, SelectorError> {
        let backslash = self.pos - 1;
        let Some(c) = self.peek() else {
            return Err(self.error_at(backslash, "quoted value is not closed"));
        };
        self.pos += 1;
        let simple = match c {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            c if c == quote => Some(c),
            _ => None,
        };
        if let Some(c) = simple {
            return Ok(c);
        }
        let digits = match c {
            'u' => 4,
            'U' => 8,
            _ => {
                return Err(self.error_at(
                    backslash,
                    &format!(
                        "unknown escape sequence \"\\{c}\" (write a backslash as \\\\, \
                         or quote the value with backticks)"
                    ),
                ));
            }
        };
        let hex: String = self.chars.iter().skip(self.pos).take(digits).collect();
        let code = (hex.chars().count() == digits && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(&hex, 16).ok())
            .flatten()
            .and_then(char::from_u32);
        match code {
            Some(ch) => {
                self.pos += digits;
                Ok(ch)
            }
            None => Err(self.error_at(
                backslash,
                &format!("\"\\{c}\" must be followed by {digits} hex digits of a valid character"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(s: &str) -> regex::Regex {
        regex::Regex::new(s).unwrap()
    }

    #[test]
    fn metric_name_alone() {
        let s = parse_selector("apiserver_request_total").unwrap();
        assert_eq!(
            s,
            MetricSelector {
                metric: "apiserver_request_total".into(),
                matchers: vec![]
            }
        );
        let s = parse_selector("job:up:sum{}").unwrap();
        assert_eq!(s.metric, "job:up:sum");
        assert!(s.matchers.is_empty());
    }

    #[test]
    fn all_four_matchers_with_spaces_and_trailing_comma() {
        let s = parse_selector(
            r#" apiserver_request_total { verb = "GET", code=~"5..", resource!="pods", scope !~ 'cluster|namespace', } "#,
        )
        .unwrap();
        assert_eq!(
            s.matchers,
            vec![
                LabelMatcher::Equal("verb".into(), "GET".into()),
                LabelMatcher::Regex("code".into(), re("^(?:5..)$")),
                LabelMatcher::NotEqual("resource".into(), "pods".into()),
                LabelMatcher::NotRegex("scope".into(), re("^(?:cluster|namespace)$")),
            ]
        );
    }

    #[test]
    fn regexes_are_fully_anchored() {
        let s = parse_selector(r#"m{code=~"5.."}"#).unwrap();
        let LabelMatcher::Regex(_, r) = &s.matchers[0] else {
            panic!("not a regex")
        };
        assert!(r.is_match("500"));
        assert!(!r.is_match("5000"));
        assert!(!r.is_match("x500"));
    }

    #[test]
    fn escapes_and_raw_strings() {
        let s = parse_selector(r#"m{a="x\"y\\z\n\u00e9", b=`\d+`}"#).unwrap();
        assert_eq!(
            s.matchers[0],
            LabelMatcher::Equal("a".into(), "x\"y\\z\né".into())
        );
        assert_eq!(
            s.matchers[1],
            LabelMatcher::Equal("b".into(), r"\d+".into())
        );
    }

    #[test]
    fn errors_name_the_position() {
        for (text, position, message) in [
            (
                "",
                1,
                "expected a metric name (letters, digits, '_' and ':', not starting with a digit)",
            ),
            (
                "{a=\"b\"}",
                1,
                "expected a metric name (letters, digits, '_' and ':', not starting with a digit)",
            ),
            (
                "1abc",
                1,
                "expected a metric name (letters, digits, '_' and ':', not starting with a digit)",
            ),
            (
                "m{code}",
                7,
                "expected =, !=, =~ or !~ after label name \"code\"",
            ),
            (
                "m{code=500}",
                8,
                "expected a quoted value (\"…\", '…' or `…`)",
            ),
            ("m{code=\"500}", 8, "quoted value is not closed"),
            (
                "m{a=\"x\" b=\"y\"}",
                9,
                "expected ',' or '}' after a label matcher",
            ),
            ("m{a=\"x\"", 8, "expected ',' or '}' after a label matcher"),
            ("m{a!\"x\"}", 5, "expected '=' or '~' after '!'"),
            (
                "m{1a=\"x\"}",
                3,
                "expected a label name (letters, digits and '_', not starting with a digit) or '}'",
            ),
            ("m x", 3, "unexpected 'x' after the selector"),
            (
                "m{a=\"\\d\"}",
                6,
                "unknown escape sequence \"\\d\" (write a backslash as \\\\, or quote the value with backticks)",
            ),
            (
                "m{a=\"\\u12\"}",
                6,
                "\"\\u\" must be followed by 4 hex digits of a valid character",
            ),
            ("m{a=~\"(\"}", 6, "invalid regex: unclosed group"),
        ] {
            assert_eq!(
                parse_selector(text),
                Err(SelectorError {
                    position,
                    message: message.to_string()
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn display_round_trips_through_the_parser() {
        let text = r#"m{a="x",b!="y"}"#;
        assert_eq!(parse_selector(text).unwrap().to_string(), text);
    }

    #[test]
    fn error_display() {
        let e = parse_selector("m{code}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid series selector at character 7: expected =, !=, =~ or !~ after label name \"code\""
        );
    }
}
