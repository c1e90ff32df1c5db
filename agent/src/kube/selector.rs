//! Syntax checks for label and field selectors, so a malformed selector is an error in
//! the invariant file (with the character it goes wrong at) rather than a list request
//! the API server refuses for the whole run. The API server stays the judge of what a
//! selector means (which fields a kind supports, for example).

/// Checks a label selector as `kubectl get -l` takes it: comma-separated requirements
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
/// `key notin (a,b)`, `key>n`, `key<n`.
pub fn check_label_selector(text: &str) -> Result<(), String> {
    let mut p = Parser { text, pos: 0 };
    p.skip_spaces();
    if p.at_end() {
        return Err("is empty; leave labelSelector out to select every object".to_string());
    }
    loop {
        p.requirement()?;
        p.skip_spaces();
        if p.at_end() {
            return Ok(());
        }
        p.expect(",")?;
    }
}

/// Checks a field selector: comma-separated `field=value`, `field==value` or
/// `field!=value`, where a value may escape `\,`, `\=` and `\\`.
pub fn check_field_selector(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("is empty; leave fieldSelector out to select every object".to_string());
    }
    let mut offset = 0;
    for term in split_unescaped(text, ',') {
        let at = |i: usize| offset + i + 1;
        let Some(op) = term.find(['=', '!']) else {
            return Err(format!(
                "term {:?} at character {} has no operator; write field=value, field==value or field!=value",
                term.trim(),
                at(0)
            ));
        };
        let field = term[..op].trim();
        let rest = &term[op..];
        let value = if let Some(v) = rest.strip_prefix("!=") {
            v
        } else if let Some(v) = rest.strip_prefix("==") {
            v
        } else if let Some(v) = rest.strip_prefix('=') {
            v
        } else {
            return Err(format!(
                "invalid operator at character {}; write field=value, field==value or field!=value",
                at(op)
            ));
        };
        if field.is_empty() {
            return Err(format!("missing field name at character {}", at(0)));
        }
        if !field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!(
                "field {field:?} at character {} may only hold letters, digits, '.', '-' and '_'",
                at(0)
            ));
        }
        if let Some(i) = unescaped(value).find(['=', '!']) {
            return Err(format!(
                "unexpected {:?} in the value of {field:?}; escape it with a backslash",
                &unescaped(value)[i..=i]
            ));
        }
        offset += term.len() + 1;
    }
    Ok(())
}

/// Splits at `sep` unless it is escaped with a backslash.
fn split_unescaped(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `value` with escaped characters (`\x`) removed, for finding unescaped operators.
fn unescaped(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    /// 1-based character position of the cursor, for messages.
    fn column(&self) -> usize {
        self.text[..self.pos].chars().count() + 1
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            Ok(())
        } else {
            Err(format!(
                "expected {token:?} at character {}, found {}",
                self.column(),
                self.found()
            ))
        }
    }

    fn found(&self) -> String {
        match self.rest().chars().next() {
            Some(c) => format!("{c:?}"),
            None => "the end".to_string(),
        }
    }

    /// A run of characters that may appear in keys and values.
    fn word(&mut self) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.text[start..self.pos]
    }

    fn requirement(&mut self) -> Result<(), String> {
        self.skip_spaces();
        let negated = self.rest().starts_with('!');
        if negated {
            self.pos += 1;
            self.skip_spaces();
        }
        let key_column = self.column();
        let key = self.word().to_string();
        if key.is_empty() {
            return Err(format!(
                "expected a label key at character {key_column}, found {}",
                self.found()
            ));
        }
        check_key(&key).map_err(|e| format!("label key {key:?} at character {key_column}: {e}"))?;
        self.skip_spaces();
        if negated || self.at_end() || self.rest().starts_with(',') {
            return Ok(());
        }
        let rest = self.rest();
        let op = ["==", "!=", "=", ">", "<"]
            .into_iter()
            .find(|op| rest.starts_with(op));
        if let Some(op) = op {
            self.pos += op.len();
            self.skip_spaces();
            let value_column = self.column();
            let value = self.word().to_string();
            if matches!(op, ">" | "<") {
                if value.parse::<i64>().is_err() {
                    return Err(format!(
                        "{key}{op} needs an integer at character {value_column}, found {value:?}"
                    ));
                }
                return Ok(());
            }
            return check_value(&value)
                .map_err(|e| format!("value {value:?} at character {value_column}: {e}"));
        }
        let op_column = self.column();
        let word = self.word().to_string();
        if word != "in" && word != "notin" {
            return Err(format!(
                "expected an operator (=, ==, !=, in, notin, >, <) after {key:?} at character \
                 {op_column}"
            ));
        }
        self.expect("(")?;
        loop {
            self.skip_spaces();
            let value_column = self.column();
            let value = self.word().to_string();
            check_value(&value)
                .map_err(|e| format!("value {value:?} at character {value_column}: {e}"))?;
            self.skip_spaces();
            if self.rest().starts_with(')') {
                self.pos += 1;
                return Ok(());
            }
            self.expect(",")?;
        }
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid {
            return Err(format!(
                "prefix {prefix:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
            ));
        }
    }
    if name.is_empty() {
        return Err("the name part is empty".to_string());
    }
    check_name(name)
}

/// A label value: empty, or a name.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.contains('/') {
        return Err("values may not contain '/'".to_string());
    }
    check_name(value)
}

/// At most 63 letters, digits, '-', '_' and '.', starting and ending alphanumeric.
fn check_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if bytes.len() > 63 {
        return Err("longer than 63 characters".to_string());
    }
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return Err("must start and end with a letter or digit".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_kubectl_accepts() {
        for ok in [
            "app=web",
            "app==web,tier!=db",
            "node-role.kubernetes.io/control-plane",
            "!node-role.kubernetes.io/control-plane",
            "env in (prod, staging),tier notin (db)",
            " app = web , release ",
            "k8s-app=kube-dns",
            "app=",
            "count>3",
        ] {
            assert_eq!(check_label_selector(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn label_selector_errors_name_the_character() {
        let cases = [
            ("", "is empty"),
            (
                "app=web,",
                "expected a label key at character 9, found the end",
            ),
            (
                "app=web;tier=db",
                "expected \",\" at character 8, found ';'",
            ),
            ("app in prod", "expected \"(\" at character 8"),
            (
                "app=-web",
                "value \"-web\" at character 5: must start and end",
            ),
            (
                "Foo_Bar.COM/app=x",
                "prefix \"Foo_Bar.COM\" is not a DNS subdomain",
            ),
            ("app ~ web", "expected an operator"),
            ("count>three", "needs an integer"),
        ];
        for (selector, expected) in cases {
            let e = check_label_selector(selector).unwrap_err();
            assert!(e.contains(expected), "{selector:?}: {e}");
        }
    }

    #[test]
    fn field_selectors() {
        for ok in [
            "status.phase=Running",
            "metadata.namespace!=kube-system,spec.nodeName==node-1",
            "involvedObject.kind=Pod",
            "metadata.name=a\\,b",
            "spec.nodeName=",
        ] {
            assert_eq!(check_field_selector(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "is empty"),
            ("status.phase", "has no operator"),
            ("=Running", "missing field name"),
            ("status phase=Running", "may only hold letters"),
            ("a=b=c", "unexpected \"=\""),
        ];
        for (selector, expected) in cases {
            let e = check_field_selector(selector).unwrap_err();
            assert!(e.contains(expected), "{selector:?}: {e}");
        }
    }
}
