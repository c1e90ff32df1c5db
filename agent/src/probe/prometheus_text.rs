//! A zero-copy parser for the Prometheus text exposition format (0.0.4), which also
//! accepts OpenMetrics text (1.0).
//!
//! A `/metrics` body from a busy kube-apiserver has tens of thousands of series and a
//! metrics probe reads it every few seconds, so the parser never allocates on the happy
//! path: [`samples`] yields [`SampleRef`]s that borrow the metric name and the raw label
//! text from the body, and label values are only unescaped (and only allocated when they
//! hold escapes) when a caller asks for them — after comparing the metric name, which is
//! what rejects almost every line. Every line is still fully syntax-checked, so a broken
//! body fails with a [`ParseError`] naming the line instead of being misread.
//!
//! Accepted beyond plain 0.0.4: CRLF line ends, `# EOF` (ends the body), OpenMetrics
//! exemplars after `#` (ignored), float timestamps, whitespace before `{`, and a trailing
//! comma in label sets. `_created` lines are ordinary samples named `..._created`: a
//! selector picks them only when it names them. Not supported: the quoted UTF-8 metric
//! names of Prometheus 3 (`{"my.metric"} 1`), which are only sent when a scraper asks for
//! them in its `Accept` header; such a line fails with "expected metric name".

use std::borrow::Cow;

/// A syntax error, with the 1-based line it is on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number in the body.
    pub line: usize,
    /// What is wrong with the line.
    pub kind: ParseErrorKind,
}

/// What is wrong with one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The line starts with something that cannot begin a metric name.
    #[error("expected metric name")]
    ExpectedMetricName,
    /// The metric name is followed by a character that is neither a blank, `{` nor part
    /// of a name.
    #[error("unexpected character {0:?} after metric name")]
    UnexpectedAfterName(char),
    /// Inside `{...}`, a label name (or the closing brace) was expected.
    #[error("expected label name or '}}'")]
    ExpectedLabelName,
    /// A label name is not followed by `=`.
    #[error("expected '=' after label name")]
    ExpectedEquals,
    /// A label's `=` is not followed by a quoted value.
    #[error("expected '\"' to open label value")]
    ExpectedLabelValue,
    /// A label value's closing quote is missing.
    #[error("unterminated label value")]
    UnterminatedLabelValue,
    /// A label value is followed by something other than `,` or `}`.
    #[error("expected ',' or '}}' after label value")]
    ExpectedCommaOrBrace,
    /// Nothing follows the metric name (and labels).
    #[error("expected value after metric name")]
    ExpectedValue,
    /// The value is not a number, `NaN`, `+Inf` or `-Inf`.
    #[error("invalid value {0:?}")]
    InvalidValue(String),
    /// The text after the value is neither a timestamp nor an exemplar.
    #[error("invalid timestamp {0:?}")]
    InvalidTimestamp(String),
    /// Something other than an exemplar follows the timestamp.
    #[error("unexpected text after value")]
    TrailingText,
}

/// One sample line, borrowing from the body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRef<'a> {
    /// The metric (sample) name, e.g. `apiserver_request_total`.
    pub name: &'a str,
    /// The text between `{` and `}` (already syntax-checked); empty without labels.
    raw_labels: &'a str,
    /// The sample value.
    pub value: f64,
    /// The timestamp as written (milliseconds in Prometheus text, seconds in OpenMetrics).
    pub timestamp: Option<f64>,
}

impl<'a> SampleRef<'a> {
    /// The sample's labels in written order, values unescaped.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            rest: self.raw_labels,
        }
    }

    /// The text between `{` and `}` as written (escapes kept): the series' identity from
    /// one scrape of a target to the next.
    pub fn raw_labels(&self) -> &'a str {
        self.raw_labels
    }

    /// The value of label `name`, unescaped, or `None` when the sample has no such label.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Iterator over a sample's `(name, value)` label pairs.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // The text was validated by `scan_labels`; this walks the same grammar and simply
        // stops (rather than panicking) if it ever meets something unexpected.
        let text = self.rest;
        let b = text.as_bytes();
        let mut i = skip_blank(b, 0);
        if b.get(i) == Some(&b',') {
            i = skip_blank(b, i + 1);
        }
        let name_start = i;
        while b.get(i).is_some_and(|&c| is_label_char(c)) {
            i += 1;
        }
        let name = text.get(name_start..i)?;
        if name.is_empty() {
            self.rest = "";
            return None;
        }
        i = skip_blank(b, i);
        if b.get(i) != Some(&b'=') {
            self.rest = "";
            return None;
        }
        i = skip_blank(b, i + 1);
        if b.get(i) != Some(&b'"') {
            self.rest = "";
            return None;
        }
        let value_start = i + 1;
        let value_end = scan_quoted(b, value_start)?;
        let raw = text.get(value_start..value_end)?;
        self.rest = text.get(value_end + 1..).unwrap_or("");
        Some((name, unescape(raw)))
    }
}

/// Iterator over the samples of a body; see [`samples`].
#[derive(Clone, Debug)]
pub struct Samples<'a> {
    rest: &'a str,
    line: usize,
    done: bool,
}

/// Parses `body` lazily: each item is one sample line, or the first syntax error (after
/// which the iterator ends). Comments, `# HELP`/`# TYPE` and blank lines are skipped;
/// `# EOF` ends the body.
pub fn samples(body: &str) -> Samples<'_> {
    Samples {
        rest: body,
        line: 0,
        done: false,
    }
}

impl<'a> Iterator for Samples<'a> {
    type Item = Result<SampleRef<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && !self.rest.is_empty() {
            let (line, rest) = match self.rest.split_once('\n') {
                Some((line, rest)) => (line, rest),
                None => (self.rest, ""),
            };
            self.rest = rest;
            self.line += 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim_end() == "# EOF" {
                self.done = true;
                break;
            }
            match parse_line(line) {
                Ok(Some(sample)) => return Some(Ok(sample)),
                Ok(None) => continue,
                Err(kind) => {
                    self.done = true;
                    return Some(Err(ParseError {
                        line: self.line,
                        kind,
                    }));
                }
            }
        }
        None
    }
}

impl std::iter::FusedIterator for Samples<'_> {}

/// Parses one line (without its line end). `Ok(None)` for blank and comment lines.
///
/// Public so a caller that reads a body in chunks can feed it line by line.
pub fn parse_line(line: &str) -> Result<Option<SampleRef<'_>>, ParseErrorKind> {
    let b = line.as_bytes();
    let mut i = skip_blank(b, 0);
    let Some(&first) = b.get(i) else {
        return Ok(None);
    };
    if first == b'#' {
        return Ok(None);
    }
    if !is_name_start(first) {
        return Err(ParseErrorKind::ExpectedMetricName);
    }
    let name_start = i;
    while b.get(i).is_some_and(|&c| is_name_char(c)) {
        i += 1;
    }
    let name = line
        .get(name_start..i)
        .ok_or(ParseErrorKind::ExpectedMetricName)?;
    let after_name = i;
    i = skip_blank(b, i);
    let mut raw_labels = "";
    match b.get(i) {
        None => return Err(ParseErrorKind::ExpectedValue),
        Some(b'{') => {
            let start = i + 1;
            let close = scan_labels(b, start)?;
            raw_labels = line
                .get(start..close)
                .ok_or(ParseErrorKind::ExpectedLabelName)?;
            i = skip_blank(b, close + 1);
        }
        Some(&c) if i == after_name => {
            // Name characters stopped at something that is not a separator, e.g. the
            // `-` in `foo-bar 1`.
            return Err(ParseErrorKind::UnexpectedAfterName(char_at(line, i, c)));
        }
        Some(_) => {}
    }

    let value_text = token(line, i);
    if value_text.is_empty() {
        return Err(ParseErrorKind::ExpectedValue);
    }
    let value =
        parse_value(value_text).ok_or_else(|| ParseErrorKind::InvalidValue(snippet(value_text)))?;
    i = skip_blank(b, i + value_text.len());

    let mut timestamp = None;
    match b.get(i) {
        None | Some(b'#') => {}
        Some(_) => {
            let ts_text = token(line, i);
            let ts = parse_timestamp(ts_text)
                .ok_or_else(|| ParseErrorKind::InvalidTimestamp(snippet(ts_text)))?;
            timestamp = Some(ts);
            i = skip_blank(b, i + ts_text.len());
            match b.get(i) {
                // An OpenMetrics exemplar (`# {trace_id="..."} 1.0`) may follow; it is
                // not part of the sample, so it is not checked further.
                None | Some(b'#') => {}
                Some(_) => return Err(ParseErrorKind::TrailingText),
            }
        }
    }

    Ok(Some(SampleRef {
        name,
        raw_labels,
        value,
        timestamp,
    }))
}

/// Checks a label set starting just after `{`; returns the index of the closing `}`.
fn scan_labels(b: &[u8], mut i: usize) -> Result<usize, ParseErrorKind> {
    loop {
        i = skip_blank(b, i);
        match b.get(i) {
            Some(b'}') => return Ok(i),
            Some(&c) if is_label_start(c) => {}
            _ => return Err(ParseErrorKind::ExpectedLabelName),
        }
        while b.get(i).is_some_and(|&c| is_label_char(c)) {
            i += 1;
        }
        i = skip_blank(b, i);
        if b.get(i) != Some(&b'=') {
            return Err(ParseErrorKind::ExpectedEquals);
        }
        i = skip_blank(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return Err(ParseErrorKind::ExpectedLabelValue);
        }
        let close = scan_quoted(b, i + 1).ok_or(ParseErrorKind::UnterminatedLabelValue)?;
        i = skip_blank(b, close + 1);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i),
            _ => return Err(ParseErrorKind::ExpectedCommaOrBrace),
        }
    }
}

/// Finds the closing quote of a label value that starts at `i`; `None` if there is none.
/// A backslash always escapes the next byte, so `\"` never closes the value.
fn scan_quoted(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Decodes `\\`, `\"` and `\n`; any other escape is kept as written (Prometheus' own
/// parser is as lenient). Borrows unless there is an escape.
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Parses a sample value: a float, `NaN`, `+Inf`, `-Inf` (any case, as Go's ParseFloat).
fn parse_value(text: &str) -> Option<f64> {
    // Rust's float parser accepts the same special spellings as Go's ("NaN", "Inf",
    // "+Inf", "-Inf", "infinity") case-insensitively; it rejects Go's hex floats, which
    // no exporter in practice writes.
    text.parse::<f64>().ok()
}

/// Parses a timestamp: integer milliseconds (Prometheus) or float seconds (OpenMetrics).
fn parse_timestamp(text: &str) -> Option<f64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms as f64);
    }
    text.parse::<f64>().ok().filter(|t| t.is_finite())
}

/// The run of non-blank bytes starting at `i`.
fn token(line: &str, i: usize) -> &str {
    let b = line.as_bytes();
    let mut end = i;
    while b.get(end).is_some_and(|&c| c != b' ' && c != b'\t') {
        end += 1;
    }
    // Blanks are ASCII, so `end` is always a char boundary; `get` keeps that unproven
    // assumption from ever becoming a panic.
    line.get(i..end).unwrap_or("")
}

/// The character at byte `i`, for messages (the byte itself when not on a boundary).
fn char_at(line: &str, i: usize, byte: u8) -> char {
    line.get(i..)
        .and_then(|s| s.chars().next())
        .unwrap_or(byte as char)
}

/// A short copy of offending text for an error message.
fn snippet(text: &str) -> String {
    const MAX: usize = 40;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", text.get(..cut).unwrap_or(""))
}

fn skip_blank(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| c == b' ' || c == b'\t') {
        i += 1;
    }
    i
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn is_label_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! Fixtures shared with the metrics probe's tests.

    /// A body shaped like a real kube-apiserver scrape (abridged, but with its quirks:
    /// long label sets, histogram buckets with `+Inf`, escaped quotes, untyped lines).
    pub const APISERVER_BODY: &str = r#"# HELP aggregator_discovery_aggregation_count_total [ALPHA] Counter of number of times discovery was aggregated
# TYPE aggregator_discovery_aggregation_count_total counter
aggregator_discovery_aggregation_count_total 3
# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 1520
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 98211
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 410
apiserver_request_total{code="404",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 77
apiserver_request_total{code="500",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="500",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="503",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 1
# HELP apiserver_request_duration_seconds [STABLE] Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1",le="0.005"} 90000
apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1",le="0.025"} 97000
apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1",le="+Inf"} 98292
apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 312.44
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 98292
# HELP apiserver_storage_objects [STABLE] Number of stored objects at the time of last check split by kind.
# TYPE apiserver_storage_objects gauge
apiserver_storage_objects{resource="pods"} 150
apiserver_storage_objects{resource="events"} 4312
apiserver_storage_objects{resource="leases.coordination.k8s.io"} 9
# HELP apiserver_validation_declarative_validation_mismatch_total [BETA] Number of times declarative validation results differed from handwritten validation results for core types.
# TYPE apiserver_validation_declarative_validation_mismatch_total counter
apiserver_validation_declarative_validation_mismatch_total 0
# HELP kubernetes_feature_enabled [BETA] This metric records the data about the stage and enablement of a k8s feature.
# TYPE kubernetes_feature_enabled gauge
kubernetes_feature_enabled{name="APIResponseCompression",stage="BETA"} 1
kubernetes_feature_enabled{name="AllAlpha",stage="ALPHA"} 0
# HELP apiserver_admission_webhook_rejection_count [ALPHA] Admission webhook rejection count.
# TYPE apiserver_admission_webhook_rejection_count counter
apiserver_admission_webhook_rejection_count{error_type="calling_webhook_error",name="validate.\"quoted\".example.com",operation="CREATE",rejection_code="0",type="validating"} 4
# HELP process_start_time_seconds [ALPHA] Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.76409e+09
# HELP go_gc_duration_seconds A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.4611e-05
go_gc_duration_seconds{quantile="1"} NaN
go_gc_duration_seconds_sum 0.052
go_gc_duration_seconds_count 311
"#;
}

#[cfg(test)]
mod tests {
    use super::tests_support::APISERVER_BODY;
    use super::*;
    use proptest::prelude::*;

    /// A parsed sample, owned: name, labels, value.
    type Owned = (String, Vec<(String, String)>, f64);

    fn all(body: &str) -> Result<Vec<Owned>, ParseError> {
        samples(body)
            .map(|s| {
                s.map(|s| {
                    let labels = s
                        .labels()
                        .map(|(n, v)| (n.to_string(), v.into_owned()))
                        .collect();
                    (s.name.to_string(), labels, s.value)
                })
            })
            .collect()
    }

    fn err(body: &str) -> ParseError {
        match all(body) {
            Err(e) => e,
            Ok(v) => panic!("expected an error, parsed {v:?}"),
        }
    }

    #[test]
    fn parses_names_labels_values_and_skips_comments() {
        let body =
            "# HELP up Whether up.\n# TYPE up gauge\n\nup 1\nreqs{code=\"200\",verb=\"GET\"} 42\n";
        let got = all(body).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("up".into(), vec![], 1.0));
        assert_eq!(
            got[1],
            (
                "reqs".into(),
                vec![("code".into(), "200".into()), ("verb".into(), "GET".into())],
                42.0
            )
        );
    }

    #[test]
    fn special_values_and_timestamps() {
        let body = "a NaN\nb +Inf\nc -Inf 1700000000000\nd 1.5e3 1700000000.123\ne -0.25\n";
        let got: Vec<SampleRef<'_>> = samples(body).collect::<Result<_, _>>().unwrap();
        assert!(got[0].value.is_nan());
        assert_eq!(got[1].value, f64::INFINITY);
        assert_eq!(got[2].value, f64::NEG_INFINITY);
        assert_eq!(got[2].timestamp, Some(1_700_000_000_000.0));
        assert_eq!(got[3].value, 1500.0);
        assert_eq!(got[3].timestamp, Some(1_700_000_000.123));
        assert_eq!(got[4].value, -0.25);
        assert_eq!(got[4].timestamp, None);
    }

    #[test]
    fn escaped_label_values_are_decoded() {
        let body = r#"m{path="C:\\dir",msg="say \"hi\"\nbye",odd="a\qb"} 1"#;
        let got = all(body).unwrap();
        assert_eq!(
            got[0].1,
            vec![
                ("path".to_string(), "C:\\dir".to_string()),
                ("msg".to_string(), "say \"hi\"\nbye".to_string()),
                ("odd".to_string(), "a\\qb".to_string()),
            ]
        );
    }

    #[test]
    fn braces_commas_and_hashes_inside_values_do_not_confuse_the_parser() {
        let body = "m{a=\"}{,=# 1 2\",b=\"\\\"}\"} 7\n";
        let got = all(body).unwrap();
        assert_eq!(got[0].2, 7.0);
        assert_eq!(got[0].1[0].1, "}{,=# 1 2");
        assert_eq!(got[0].1[1].1, "\"}");
    }

    #[test]
    fn unescaped_values_borrow() {
        let body = "m{a=\"plain\"} 1";
        let s = samples(body).next().unwrap().unwrap();
        assert!(matches!(s.label("a"), Some(Cow::Borrowed("plain"))));
        assert_eq!(s.label("missing"), None);
    }

    #[test]
    fn crlf_blank_lines_leading_space_trailing_comma() {
        let body = "# TYPE x counter\r\n\r\n  x_total{a=\"1\",} 3\r\ny { a = \"2\" , b=\"3\" } 4\r\nz{} 5\r\n";
        let got = all(body).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, "x_total");
        assert_eq!(got[0].1, vec![("a".to_string(), "1".to_string())]);
        assert_eq!(got[1].1.len(), 2);
        assert_eq!(got[1].2, 4.0);
        assert_eq!(got[2], ("z".into(), vec![], 5.0));
    }

    #[test]
    fn openmetrics_exemplars_created_and_eof() {
        let body = "# TYPE rpc_seconds histogram\n\
            rpc_seconds_bucket{le=\"0.1\"} 8 # {trace_id=\"abc\"} 0.05 1700000000.5\n\
            rpc_seconds_bucket{le=\"+Inf\"} 10 1700000000.1 # {trace_id=\"def\"} 3\n\
            rpc_seconds_count 10\n\
            rpc_seconds_created 1700000000.0\n\
            # EOF\n\
            this would be an error if it were read\n";
        let got = all(body).unwrap();
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "rpc_seconds_bucket",
                "rpc_seconds_bucket",
                "rpc_seconds_count",
                "rpc_seconds_created"
            ]
        );
        assert_eq!(got[0].2, 8.0);
        assert_eq!(got[1].1[0].1, "+Inf");
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let e = err("a 1\n\n# c\nfoo\n");
        assert_eq!(e.line, 4);
        assert_eq!(e.to_string(), "line 4: expected value after metric name");
        assert_eq!(err("foo{a=\"1\"}\n").kind, ParseErrorKind::ExpectedValue);
        assert_eq!(
            err("foo abc\n").kind,
            ParseErrorKind::InvalidValue("abc".into())
        );
        assert_eq!(
            err("foo 1 2 3\n").kind,
            ParseErrorKind::TrailingText,
            "two numbers after the value"
        );
        assert_eq!(
            err("foo 1 soon\n").kind,
            ParseErrorKind::InvalidTimestamp("soon".into())
        );
        assert_eq!(err("9foo 1\n").kind, ParseErrorKind::ExpectedMetricName);
        assert_eq!(
            err("foo-bar 1\n").kind,
            ParseErrorKind::UnexpectedAfterName('-')
        );
        assert_eq!(
            err("foo{a=\"1\" 1\n").kind,
            ParseErrorKind::ExpectedCommaOrBrace
        );
        assert_eq!(
            err("foo{a=\"1 1\n").kind,
            ParseErrorKind::UnterminatedLabelValue
        );
        assert_eq!(err("foo{a 1} 1\n").kind, ParseErrorKind::ExpectedEquals);
        assert_eq!(err("foo{a=1} 1\n").kind, ParseErrorKind::ExpectedLabelValue);
        assert_eq!(err("foo{,} 1\n").kind, ParseErrorKind::ExpectedLabelName);
        assert_eq!(
            err("foo{9=\"\"} 1\n").kind,
            ParseErrorKind::ExpectedLabelName
        );
        assert_eq!(
            err("{\"utf8.name\"} 1\n").kind,
            ParseErrorKind::ExpectedMetricName
        );
        assert_eq!(
            err("foo{a=\"x\\\"} 1\n").kind,
            ParseErrorKind::UnterminatedLabelValue
        );
    }

    #[test]
    fn iteration_stops_after_the_first_error() {
        let mut it = samples("a 1\nbad line here\nb 2\n");
        assert!(it.next().unwrap().is_ok());
        assert_eq!(it.next().unwrap().unwrap_err().line, 2);
        assert!(it.next().is_none());
    }

    #[test]
    fn long_invalid_values_are_cut_in_messages() {
        let long = "x".repeat(500);
        let e = err(&format!("foo {long}\n"));
        assert!(e.to_string().len() < 100, "{e}");
    }

    #[test]
    fn realistic_apiserver_body() {
        let got: Vec<SampleRef<'_>> = samples(APISERVER_BODY).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 25);
        let five_hundreds: f64 = got
            .iter()
            .filter(|s| s.name == "apiserver_request_total")
            .filter(|s| s.label("code").as_deref() == Some("500"))
            .map(|s| s.value)
            .sum();
        assert_eq!(five_hundreds, 5.0);
        let webhook = got
            .iter()
            .find(|s| s.name == "apiserver_admission_webhook_rejection_count")
            .unwrap();
        assert_eq!(
            webhook.label("name").as_deref(),
            Some("validate.\"quoted\".example.com")
        );
        assert_eq!(got.last().unwrap().value, 311.0);
    }

    #[test]
    fn large_body_parses() {
        use std::fmt::Write;
        let mut body = String::new();
        for i in 0..20_000 {
            let _ = writeln!(
                body,
                "apiserver_request_total{{code=\"200\",resource=\"r{i}\",verb=\"GET\"}} {i}"
            );
        }
        let count = samples(&body).filter(|s| s.is_ok()).count();
        assert_eq!(count, 20_000);
    }

    proptest! {
        #[test]
        fn random_input_never_panics(body in "\\PC{0,300}") {
            // Errors end the iteration; valid samples must also walk their labels safely.
            for s in samples(&body).flatten() {
                for (n, v) in s.labels() {
                    let _ = (n.len(), v.len());
                }
            }
        }

        #[test]
        fn metric_like_input_never_panics(body in "[a-z_{}=\",#\\\\ \t\r\n0-9.eE+-]{0,300}") {
            for s in samples(&body).flatten() {
                let _ = s.label("a");
                for (n, v) in s.labels() {
                    let _ = (n.len(), v.len());
                }
            }
        }

        #[test]
        fn written_samples_round_trip(
            name in "[a-z_][a-z0-9_]{0,10}",
            value in "[^\\\\\"\n\r]{0,8}",
            v in -1.0e9f64..1.0e9,
        ) {
            let line = format!("{name}{{l=\"{value}\"}} {v}");
            let got = samples(&line).next().unwrap().unwrap();
            prop_assert_eq!(got.name, name.as_str());
            let label = got.label("l").unwrap();
            prop_assert_eq!(label.as_ref(), value.as_str());
            prop_assert_eq!(got.value, v);
        }
    }
}
