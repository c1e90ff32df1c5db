//! Markdown reference pages for invariant sets.
//!
//! Modeled on Kubernetes' generated conformance document: a summary table to scan, then
//! one section per invariant with everything a reader needs to judge a violation (what it
//! protects, who owns it, how it is probed, when it fails, and where it is defined).

use std::fmt::Write as _;

use super::duration::format_duration;
use super::spec::{Aggregation, ConnectionMode, Invariant, InvariantSet, ProbeSpec};

/// Renders `set` as a Markdown document: a summary table, then a section per invariant.
pub fn markdown_docs(set: &InvariantSet) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = render(&mut out, set);
    out
}

fn render(out: &mut String, set: &InvariantSet) -> std::fmt::Result {
    let n = set.invariants.len();
    writeln!(out, "# Cluster invariants")?;
    writeln!(out)?;
    writeln!(
        out,
        "{n} invariant{} watched by invariant-agent for the whole of an e2e run. \
         Each one names its owner, how it is probed and when it counts as violated.",
        if n == 1 { " is" } else { "s are" }
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| Name | Owner | Scope | Probe | Condition | Interval |"
    )?;
    writeln!(
        out,
        "|------|-------|-------|-------|-----------|----------|"
    )?;
    for inv in &set.invariants {
        writeln!(
            out,
            "| [{name}](#{name}) | {owner} | {scope} | {probe} | {condition} | {interval} |",
            name = inv.name,
            owner = cell(&inv.owner),
            scope = inv.scope.as_str(),
            probe = cell(&format!(
                "{} {}",
                inv.probe.kind(),
                code(&inv.probe.target())
            )),
            condition = cell(&inv.condition.describe()),
            interval = format_duration(inv.interval),
        )?;
    }
    for inv in &set.invariants {
        writeln!(out)?;
        section(out, inv)?;
    }
    Ok(())
}

fn section(out: &mut String, inv: &Invariant) -> std::fmt::Result {
    writeln!(out, "## {}", inv.name)?;
    writeln!(out)?;
    writeln!(out, "{}", inv.description.trim())?;
    writeln!(out)?;
    writeln!(out, "- Owner: {}", inv.owner)?;
    writeln!(out, "- Scope: {}", inv.scope.as_str())?;
    if !inv.labels.is_empty() {
        let labels: Vec<String> = inv
            .labels
            .iter()
            .map(|(k, v)| code(&format!("{k}={v}")))
            .collect();
        writeln!(out, "- Labels: {}", labels.join(", "))?;
    }
    writeln!(
        out,
        "- Probe: {} {}",
        probe_kind(&inv.probe),
        code(&inv.probe.target())
    )?;
    if let Some(value) = histogram_value(&inv.probe) {
        writeln!(out, "- Value: {value}")?;
    }
    writeln!(out, "- Condition: {}", inv.condition.describe())?;
    writeln!(
        out,
        "- Interval: {}, timeout {}",
        format_duration(inv.interval),
        format_duration(inv.timeout)
    )?;
    writeln!(out, "- Defined in: {}", code(&inv.source))?;
    Ok(())
}

/// What the value of a `histogramQuantile` probe is, in words: the quantile alone does
/// not say that it is the worst group's, nor how to find which group that was.
fn histogram_value(probe: &ProbeSpec) -> Option<String> {
    let (selector, aggregation, h) = match probe {
        ProbeSpec::Metrics(m) => (&m.selector, m.aggregation, m.histogram_quantile.as_ref()?),
        ProbeSpec::Apiserver(a) => (
            a.series.as_ref()?,
            a.aggregation,
            a.histogram_quantile.as_ref()?,
        ),
        _ => return None,
    };
    let quantile = format!(
        "the {} quantile of {} over {} (in the histogram's unit)",
        h.quantile,
        code(&selector.metric),
        format_duration(h.window)
    );
    Some(if h.by.is_empty() {
        quantile
    } else {
        let which = if aggregation == Aggregation::Min {
            "lowest"
        } else {
            "highest"
        };
        format!(
            "{quantile}, the {which} of the groups by {}; the agent logs which group \
             it is whenever that changes",
            h.by.join(", ")
        )
    })
}

/// The probe kind with the detail that changes what a failure means.
fn probe_kind(probe: &ProbeSpec) -> String {
    match probe {
        ProbeSpec::Http(h) => format!("http {}", h.method),
        ProbeSpec::Tcp(t) if t.tls.is_some() => "tcp + TLS handshake".to_string(),
        ProbeSpec::Apiserver(a) if a.connection == ConnectionMode::New => {
            "apiserver GET, new connection per sample".to_string()
        }
        ProbeSpec::Apiserver(_) => "apiserver GET".to_string(),
        ProbeSpec::Resource(_) | ProbeSpec::Events(_) => format!("{} (watch)", probe.kind()),
        other => other.kind().to_string(),
    }
}

/// Inline code that survives backticks in the text.
fn code(text: &str) -> String {
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// Text safe inside a table cell: pipes escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
defaults:
  labels: {suite: e2e}
invariants:
  - name: apiserver-readyz
    description: |
      The API server reports ready.
      A failing readyz means requests are refused.
    owner: sig-api-machinery
    scope: cluster
    interval: 1s
    labels: {component: apiserver}
    probe:
      http: {url: "https://127.0.0.1:6443/readyz", tls: {insecureSkipVerify: true}}
    condition:
      availability: {target: 99.9, window: 5m}
  - name: no-5xx
    description: No server errors.
    owner: sig|odd
    probe:
      metrics:
        url: https://127.0.0.1:6443/metrics
        series: 'apiserver_request_total{code=~"5.."}'
    condition:
      increase: {max: 0}
"#;

    #[test]
    fn renders_table_and_sections() {
        let set = parse_str("inv.yaml", FILE).unwrap();
        let md = markdown_docs(&set);
        let expected = r#"# Cluster invariants

2 invariants are watched by invariant-agent for the whole of an e2e run. Each one names its owner, how it is probed and when it counts as violated.

| Name | Owner | Scope | Probe | Condition | Interval |
|------|-------|-------|-------|-----------|----------|
| [apiserver-readyz](#apiserver-readyz) | sig-api-machinery | cluster | http `https://127.0.0.1:6443/readyz` | availability >= 99.9% over 5m | 1s |
| [no-5xx](#no-5xx) | sig\|odd | node | metrics `https://127.0.0.1:6443/metrics apiserver_request_total{code=~"5.."}` | increase <= 0 over the run | 5s |

## apiserver-readyz

The API server reports ready.
A failing readyz means requests are refused.

- Owner: sig-api-machinery
- Scope: cluster
- Labels: `component=apiserver`, `suite=e2e`
- Probe: http GET `https://127.0.0.1:6443/readyz`
- Condition: availability >= 99.9% over 5m
- Interval: 1s, timeout 1s
- Defined in: `inv.yaml:6:5`

## no-5xx

No server errors.

- Owner: sig|odd
- Scope: node
- Labels: `suite=e2e`
- Probe: metrics `https://127.0.0.1:6443/metrics apiserver_request_total{code=~"5.."}`
- Condition: increase <= 0 over the run
- Interval: 5s, timeout 5s
- Defined in: `inv.yaml:18:5`
"#;
        assert_eq!(md, expected);
    }

    #[test]
    fn kubernetes_probes_say_what_they_watch() {
        let file = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: nodes-ready
    description: Every Node is Ready.
    owner: sig-node
    scope: cluster
    probe:
      resource:
        apiVersion: v1
        kind: Node
        expression: '!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")'
    condition:
      threshold: {max: 0}
  - name: readyz-new
    description: Ready on new connections.
    owner: sig-api-machinery
    probe:
      apiserver: {path: /readyz, connection: new}
    condition:
      availability: {target: 100}
"#;
        let md = markdown_docs(&parse_str("k.yaml", file).unwrap());
        assert!(
            md.contains(
                "- Probe: resource (watch) `v1 Node: sum(!object.status.conditions.exists(c, c.type == \"Ready\" && c.status == \"True\"))`"
            ),
            "{md}"
        );
        assert!(
            md.contains("- Probe: apiserver GET, new connection per sample `/readyz`"),
            "{md}"
        );
    }

    #[test]
    fn inline_code_survives_backticks() {
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(code("plain"), "`plain`");
    }

    /// A histogramQuantile probe says in words what its value is and where to find the
    /// group that gives it; the table shows the PromQL it stands for.
    #[test]
    fn a_histogram_quantile_value_is_explained() {
        let file = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: slo
    description: p99 within 1 s.
    owner: sig-scalability
    interval: 30s
    probe:
      apiserver:
        path: /metrics
        series: 'apiserver_request_duration_seconds_bucket{scope="resource"}'
        histogramQuantile: {by: [resource, verb]}
    condition:
      threshold: {max: 1}
"#;
        let md = markdown_docs(&parse_str("inv.yaml", file).unwrap());
        assert!(
            md.contains(
                "- Value: the 0.99 quantile of `apiserver_request_duration_seconds_bucket` over \
                 5m (in the histogram's unit), the highest of the groups by resource, verb; the \
                 agent logs which group it is whenever that changes\n"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "max(histogram_quantile(0.99, sum by (le, resource, verb) \
                 (increase(apiserver_request_duration_seconds_bucket{scope=\"resource\"}[5m]))))"
            ),
            "{md}"
        );
    }
}
