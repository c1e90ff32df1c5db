//! A single self-contained HTML page: run facts, a summary table worst first, a zoomable
//! timeline (one row per invariant with its violation intervals, overlaid with the tests
//! and phases of the run) and every violation in detail.
//!
//! The page loads nothing: CSS and JS are inline, there are no fonts, images or links to
//! other hosts, so it opens from a CI artifact store or a laptop without network access.
//!
//! **Safety.** Every string from the report (error messages come from remote servers, test
//! names from the suite) is HTML-escaped into element text or quoted attributes; the
//! script never builds markup from data (it reads `data-*` attributes and writes
//! `textContent`), and no report data is placed inside the `<script>`. A `<script>` in an
//! error message is therefore shown as text and never runs.
//!
//! **Positions.** Every timeline element carries `data-start` and `data-end` (ms since
//! the epoch; an open interval or a running test ends at the report's end and has
//! `data-open="true"`); violation intervals also carry `data-invariant` and
//! `data-expected`; gaps (the agent was down: `run.gaps`) are shaded bands of class
//! `gap` across every row, with `data-reason`. The server renders positions for the whole run (so the page reads
//! without JS); the script re-positions on zoom and pan (and opens at `#view=START-END`
//! when the address says so), records the visible range in
//! `body[data-view-start|end]`, and each interval's rendered edges as fractions of its
//! track in `data-rendered-left|right`, which tests and tools can check.

use std::collections::HashSet;
use std::fmt::Write;

use super::{AnnotationKind, InvariantReport, Report, RunStatus, Verdict};

/// Most lanes the test track is packed into; tests beyond them share the last lane.
const MAX_TEST_LANES: usize = 10;

/// Most lanes of the phase track.
const MAX_PHASE_LANES: usize = 4;

/// Renders the report as one HTML document.
pub fn render(report: &Report) -> String {
    let run = &report.run;
    let (t0, t1) = range(report);
    let pos = |start: i64, end: i64| -> String {
        let span = (t1 - t0).max(1) as f64;
        format!(
            "left:{:.4}%;width:{:.4}%",
            (start - t0) as f64 / span * 100.0,
            (end - start).max(0) as f64 / span * 100.0
        )
    };
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <title>Invariant report · {}</title><style>{CSS}</style></head>\n",
        h(&run.id)
    );
    let _ = writeln!(
        o,
        "<body data-run-start=\"{}\" data-run-end=\"{}\" data-full-start=\"{t0}\" data-full-end=\"{t1}\" data-view-start=\"{t0}\" data-view-end=\"{t1}\">",
        run.started_at.0,
        report.end_time().0
    );

    // ----- header -----
    o.push_str("<header><h1>Invariant report</h1><dl class=\"facts\">");
    let mut fact = |k: &str, v: &str| {
        let _ = write!(o, "<div><dt>{}</dt><dd>{}</dd></div>", h(k), h(v));
    };
    fact("Run", &run.id);
    if let Some(j) = &run.context.job_name {
        fact("Job", j);
    }
    if let Some(b) = &run.context.build_id {
        fact("Build", b);
    }
    if let Some(c) = &run.context.cluster {
        fact("Cluster", c);
    }
    if let Some(n) = &run.node {
        fact("Node", n);
    }
    fact("Started", &run.started_at.to_rfc3339());
    fact("Ended", &report.end_time().to_rfc3339());
    fact("Duration", &human(run.duration_seconds));
    fact("Agent", &run.agent_version);
    o.push_str("</dl>");
    match run.status {
        RunStatus::Completed => o.push_str(
            "<p class=\"status ok\" id=\"run-status\" data-status=\"completed\">Run completed: this is the final report.</p>",
        ),
        RunStatus::Running => {
            let _ = write!(
                o,
                "<p class=\"status warn\" id=\"run-status\" data-status=\"running\">Status <b>running</b>: this is a checkpoint taken at {}. \
                 If the run is over, it was cut short (killed) after this time and anything later is missing.</p>",
                h(&run.updated_at.to_rfc3339())
            );
        }
    }
    if !run.gaps.is_empty() {
        let _ = write!(
            o,
            "<p class=\"status warn\" id=\"run-gaps\" data-gaps=\"{}\">The agent was down {} time{}: no samples for {} in all (shaded on the timeline). \
             Everything before and after each gap is in this report.</p>",
            run.gaps.len(),
            run.gaps.len(),
            if run.gaps.len() == 1 { "" } else { "s" },
            human(run.gap_duration().as_secs_f64())
        );
    }
    o.push_str("</header>\n<main>\n");

    // ----- summary -----
    let t = &report.totals;
    let _ = write!(
        o,
        "<section id=\"summary\"><h2>Summary</h2><p class=\"chips\">\
         <span class=\"chip violated\">{} violated</span>\
         <span class=\"chip not_examined\">{} not examined</span>\
         <span class=\"chip expected_disruption\">{} expected disruption</span>\
         <span class=\"chip held\">{} held</span></p>",
        t.violated, t.not_examined, t.expected_disruption, t.held
    );
    o.push_str(
        "<table class=\"summary\"><thead><tr><th>Verdict</th><th>Invariant</th><th>Owner</th><th>Condition</th>\
         <th class=\"num\">Availability</th><th class=\"num\">Disruption</th><th class=\"num\">Violations<br><small>unexpected / expected</small></th>\
         <th class=\"num\">Samples<br><small>ok / failed / absent / missed</small></th></tr></thead><tbody>",
    );
    for i in report.by_severity() {
        let s = &i.summary;
        let _ = write!(
            o,
            "<tr data-invariant=\"{name}\" data-verdict=\"{v}\"><td><span class=\"badge {v}\">{vt}</span></td>\
             <td><a href=\"#inv-{name}\">{name}</a><div class=\"desc\">{desc}</div></td><td>{owner}</td><td>{cond}</td>\
             <td class=\"num\">{avail}</td><td class=\"num\">{disr}</td><td class=\"num\">{uv} / {ev}</td>\
             <td class=\"num\">{ok} / {failed} / {absent} / {missed}</td></tr>",
            name = h(&i.name),
            v = i.verdict.as_str(),
            vt = verdict_text(i.verdict),
            desc = h(&i.description),
            owner = h(&i.owner),
            cond = h(&i.condition_text),
            avail = s
                .availability_percent
                .map(|a| format!("{a:.2}%"))
                .unwrap_or_else(|| "–".to_string()),
            disr = human(s.disruption_seconds),
            uv = i.unexpected_violations,
            ev = i.expected_violations,
            ok = s.samples.ok,
            failed = s.samples.failed,
            absent = s.samples.absent,
            missed = s.samples.missed,
        );
    }
    o.push_str("</tbody></table>");
    if t.not_examined > 0 {
        o.push_str("<p class=\"note\"><b>not examined</b>: no sample could be judged (no samples, or only absent series). This is not a pass.</p>");
    }
    o.push_str("</section>\n");

    // ----- timeline -----
    let tests: Vec<_> = report
        .annotations
        .iter()
        .filter(|a| a.kind == AnnotationKind::Test)
        .collect();
    let phases: Vec<_> = report
        .annotations
        .iter()
        .filter(|a| a.kind == AnnotationKind::Phase)
        .collect();
    let expected_tests: HashSet<&str> = report
        .invariants
        .iter()
        .flat_map(|i| i.summary.violations.iter())
        .flat_map(|v| v.expected_by.iter().map(String::as_str))
        .collect();
    o.push_str(
        "<section id=\"timeline-section\"><h2>Timeline</h2>\
         <div class=\"controls\"><button type=\"button\" id=\"zoom-in\" title=\"Zoom in (+)\">+</button>\
         <button type=\"button\" id=\"zoom-out\" title=\"Zoom out (−)\">−</button>\
         <button type=\"button\" id=\"zoom-reset\" title=\"Whole run (0)\">Whole run</button>\
         <span class=\"hint\">Scroll to zoom, drag to pan, hover for details.</span>\
         <span class=\"legend\"><i class=\"lg unexpected\"></i>violation <i class=\"lg expected\"></i>expected disruption \
         <i class=\"lg open\"></i>still open <i class=\"lg gap\"></i>no samples (agent down) <i class=\"lg test\"></i>test <i class=\"lg failedtest\"></i>failed test <i class=\"lg phase\"></i>phase</span></div>\n",
    );
    o.push_str("<div class=\"timeline\" id=\"timeline\">");
    o.push_str("<div class=\"tl-row tl-axis-row\"><div class=\"tl-label\"></div><div class=\"tl-track\" id=\"axis\"></div></div>");
    // Phases.
    if !phases.is_empty() {
        let spans: Vec<(i64, i64)> = phases
            .iter()
            .map(|a| (a.start.0, a.end.map_or(t1, |e| e.0).max(a.start.0)))
            .collect();
        let (lanes, count) = pack(&spans, MAX_PHASE_LANES);
        let _ = write!(
            o,
            "<div class=\"tl-row tl-phases\"><div class=\"tl-label\">Phases</div><div class=\"tl-track\" style=\"height:{}px\">",
            count * 15 + 4
        );
        for ((a, (start, end)), lane) in phases.iter().zip(&spans).zip(lanes) {
            let _ = write!(
                o,
                "<div class=\"ann phase\" data-kind=\"phase\" data-name=\"{}\" data-start=\"{start}\" data-end=\"{end}\" data-open=\"{}\" style=\"{};top:{}px\"><span>{}</span></div>",
                h(&a.name),
                a.end.is_none(),
                pos(*start, *end),
                2 + lane * 15,
                h(&a.name)
            );
        }
        o.push_str("</div></div>");
    }
    // Tests, packed into lanes.
    if !tests.is_empty() {
        let spans: Vec<(i64, i64)> = tests
            .iter()
            .map(|a| (a.start.0, a.end.map_or(t1, |e| e.0).max(a.start.0)))
            .collect();
        let (lane_of, lanes) = pack(&spans, MAX_TEST_LANES);
        let placed = tests
            .iter()
            .zip(&spans)
            .zip(lane_of)
            .map(|((a, &(_, end)), lane)| (a, end, lane));
        let _ = write!(
            o,
            "<div class=\"tl-row tl-tests\"><div class=\"tl-label\">Tests <small>({})</small></div><div class=\"tl-track\" style=\"height:{}px\">",
            tests.len(),
            lanes * 9 + 4
        );
        for (a, end, lane) in placed {
            let outcome = a.outcome.as_deref().unwrap_or("running");
            let failed = matches!(
                outcome,
                "failed" | "panicked" | "interrupted" | "aborted" | "timedout"
            );
            let _ = write!(
                o,
                "<div class=\"ann test{}{}\" data-kind=\"test\" data-name=\"{}\" data-outcome=\"{}\" data-start=\"{}\" data-end=\"{end}\" data-open=\"{}\" style=\"{};top:{}px\"></div>",
                if failed { " failed" } else { "" },
                if expected_tests.contains(a.name.as_str()) {
                    " disruptive"
                } else {
                    ""
                },
                h(&a.name),
                h(outcome),
                a.start.0,
                a.end.is_none(),
                pos(a.start.0, end),
                2 + lane * 9
            );
        }
        o.push_str("</div></div>");
    }
    // One row per invariant, in severity order.
    for i in report.by_severity() {
        let _ = write!(
            o,
            "<div class=\"tl-row inv\" data-invariant=\"{name}\"><div class=\"tl-label\" title=\"{name}\"><span class=\"dot {v}\"></span><a href=\"#inv-{name}\">{name}</a></div><div class=\"tl-track\">",
            name = h(&i.name),
            v = i.verdict.as_str()
        );
        for (n, v) in i.summary.violations.iter().enumerate() {
            let end = v.end.map_or(t1, |e| e.0).max(v.start.0);
            let error = v
                .last_error
                .as_deref()
                .or(v.first_error.as_deref())
                .unwrap_or("");
            let _ = write!(
                o,
                "<div class=\"iv {}{}\" data-invariant=\"{}\" data-index=\"{n}\" data-start=\"{}\" data-end=\"{end}\" data-open=\"{}\" data-expected=\"{}\" data-ended-by-gap=\"{}\" \
                 data-class=\"{}\" data-first-error=\"{}\" data-error=\"{}\" data-samples=\"{}\" data-tests=\"{}\" data-tests-omitted=\"{}\" data-expected-by=\"{}\" style=\"{}\"></div>",
                if v.expected { "expected" } else { "unexpected" },
                if v.end.is_none() { " open" } else { "" },
                h(&i.name),
                v.start.0,
                v.end.is_none(),
                v.expected,
                v.ended_by_gap,
                v.error_class.map(|c| c.as_str()).unwrap_or("condition"),
                h(v.first_error.as_deref().unwrap_or("")),
                h(error),
                v.samples,
                h(&v.tests.join("\n")),
                v.tests_omitted,
                h(&v.expected_by.join("\n")),
                pos(v.start.0, end)
            );
        }
        o.push_str("</div></div>");
    }
    // Phase lines across all rows.
    o.push_str("<div class=\"tl-overlay\" aria-hidden=\"true\"><div class=\"tl-label\"></div><div class=\"tl-track\">");
    for a in &phases {
        let _ = write!(
            o,
            "<div class=\"phase-line\" data-start=\"{}\" data-end=\"{}\" style=\"{}\"></div>",
            a.start.0,
            a.start.0,
            pos(a.start.0, a.start.0)
        );
    }
    for g in &run.gaps {
        let _ = write!(
            o,
            "<div class=\"gap\" data-kind=\"gap\" data-name=\"{}\" data-reason=\"{}\" data-start=\"{}\" data-end=\"{}\" title=\"{}\" style=\"{}\"></div>",
            h(g.reason.describe()),
            g.reason.as_str(),
            g.start.0,
            g.end.0,
            h(&format!("no samples: {}", g.describe())),
            pos(g.start.0, g.end.0)
        );
    }
    o.push_str("</div></div></div>");
    if report.annotations.is_empty() {
        o.push_str("<p class=\"note\">No test timing in this report: give a Ginkgo JSON report with <code>report render --tests FILE</code> (or <code>run --tests-from FILE</code>) to see which tests ran during each violation.</p>");
    }
    o.push_str("<div id=\"tip\" role=\"tooltip\" hidden></div></section>\n");

    // ----- details -----
    o.push_str("<section id=\"details\"><h2>Violations</h2>");
    let mut any = false;
    for i in report.by_severity() {
        if i.summary.violations.is_empty() && i.summary.violations_dropped == 0 {
            continue;
        }
        any = true;
        details(&mut o, report, i);
    }
    if !any {
        o.push_str("<p>No invariant was violated.</p>");
    }
    o.push_str("</section>\n");
    let _ = write!(
        o,
        "</main><footer>invariant-agent {} · report schema {} · self-contained page: no network needed</footer>\n<script>{JS}</script>\n</body></html>\n",
        h(&run.agent_version),
        h(&report.schema_version)
    );
    o
}

fn details(o: &mut String, report: &Report, i: &InvariantReport) {
    let s = &i.summary;
    let _ = write!(
        o,
        "<article class=\"inv-detail\" id=\"inv-{name}\"><h3><span class=\"badge {v}\">{vt}</span> {name}</h3>\
         <p class=\"desc\">{desc}</p><p class=\"meta\">Owner <b>{owner}</b> · {cond} · {probe} <code>{target}</code> · disruption {disr}</p>",
        name = h(&i.name),
        v = i.verdict.as_str(),
        vt = verdict_text(i.verdict),
        desc = h(&i.description),
        owner = h(&i.owner),
        cond = h(&i.condition_text),
        probe = h(&i.probe),
        target = h(&i.target),
        disr = human(s.disruption_seconds),
    );
    if !i.expected_disruptions.is_empty() {
        let _ = write!(
            o,
            "<p class=\"meta\">Expected to be disrupted by tests matching: {}</p>",
            i.expected_disruptions
                .iter()
                .map(|p| format!("<code>{}</code>", h(p)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    o.push_str("<table class=\"violations\"><thead><tr><th>#</th><th>Start</th><th>End</th><th class=\"num\">Duration</th><th>Class</th><th>Errors</th><th>Tests running</th></tr></thead><tbody>");
    for (n, v) in s.violations.iter().enumerate() {
        let end = v.end.unwrap_or(report.end_time());
        let mut errors = format!(
            "<div class=\"err\">{}</div>",
            h(v.first_error.as_deref().unwrap_or(""))
        );
        if v.last_error.is_some() && v.last_error != v.first_error {
            let _ = write!(
                errors,
                "<div class=\"err last\">last: {}</div>",
                h(v.last_error.as_deref().unwrap_or(""))
            );
        }
        let mut tests = String::new();
        for t in &v.tests {
            let mark = if v.expected_by.contains(t) {
                " <span class=\"tag\">expected to disrupt</span>"
            } else {
                ""
            };
            let _ = write!(tests, "<li>{}{mark}</li>", h(t));
        }
        if v.tests_omitted > 0 {
            let _ = write!(tests, "<li>… and {} more</li>", v.tests_omitted);
        }
        let tests = if tests.is_empty() {
            "–".to_string()
        } else {
            format!("<ul>{tests}</ul>")
        };
        let _ = write!(
            o,
            "<tr class=\"{}\" data-invariant=\"{}\" data-index=\"{n}\"><td>{}{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{errors}</td><td>{tests}</td></tr>",
            if v.expected { "expected" } else { "unexpected" },
            h(&i.name),
            n + 1,
            match (v.expected, v.ended_by_gap) {
                (true, true) =>
                    " <span class=\"tag\">expected</span> <span class=\"tag\">ended by gap</span>",
                (true, false) => " <span class=\"tag\">expected</span>",
                (false, true) => " <span class=\"tag\">ended by gap</span>",
                (false, false) => "",
            },
            h(&v.start.to_rfc3339()),
            v.end
                .map(|e| h(&e.to_rfc3339()))
                .unwrap_or_else(|| "<i>still open</i>".to_string()),
            human(end.since(v.start).as_secs_f64()),
            v.error_class.map(|c| c.as_str()).unwrap_or("condition"),
        );
    }
    o.push_str("</tbody></table>");
    if s.violations_dropped > 0 {
        let _ = write!(
            o,
            "<p class=\"note\">… and {} more intervals not stored.</p>",
            s.violations_dropped
        );
    }
    o.push_str("</article>");
}

/// Packs `[start, end]` spans (sorted by start) into at most `max` lanes so that spans in
/// one lane do not overlap (beyond `max`, the last lane takes the rest). Returns each
/// span's lane and the number of lanes.
fn pack(spans: &[(i64, i64)], max: usize) -> (Vec<usize>, usize) {
    let mut lane_ends: Vec<i64> = Vec::new();
    let mut lanes = Vec::with_capacity(spans.len());
    for &(start, end) in spans {
        let lane = match lane_ends.iter().position(|&e| e <= start) {
            Some(l) => l,
            None if lane_ends.len() < max => {
                lane_ends.push(i64::MIN);
                lane_ends.len() - 1
            }
            None => max - 1,
        };
        lane_ends[lane] = lane_ends[lane].max(end);
        lanes.push(lane);
    }
    (lanes, lane_ends.len().max(1))
}

/// The time range the timeline shows when fully zoomed out: the run, widened to include
/// every annotation.
fn range(report: &Report) -> (i64, i64) {
    let mut t0 = report.run.started_at.0;
    let mut t1 = report.end_time().0;
    for a in &report.annotations {
        t0 = t0.min(a.start.0);
        if let Some(e) = a.end {
            t1 = t1.max(e.0);
        }
    }
    (t0, t1.max(t0 + 1000))
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Violated => "violated",
        Verdict::NotExamined => "not examined",
        Verdict::ExpectedDisruption => "expected disruption",
        Verdict::Held => "held",
    }
}

/// `1.5s`, `2m05s`, `1h02m`.
fn human(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// Escapes text for HTML element content and quoted attribute values. NUL and other C0
/// controls (except tab and newline) become U+FFFD.
pub fn h(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root{--bg:#f7f8fa;--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--card:#fff;--red:#cf222e;--amber:#d4a72c;--green:#1a7f37;--grey:#8c959f;--blue:#0969da;--label:230px}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI","Noto Sans",Helvetica,Arial,sans-serif}
header{background:#24292f;color:#fff;padding:16px 24px}
header h1{margin:0 0 8px;font-size:20px;font-weight:600}
.facts{display:flex;flex-wrap:wrap;gap:4px 24px;margin:0}
.facts div{display:flex;gap:6px}.facts dt{color:#9da7b3}.facts dd{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.status{margin:10px 0 0;padding:6px 10px;border-radius:6px;display:inline-block}
.status.ok{background:#1a7f3733;color:#aff5b4}.status.warn{background:#d4a72c;color:#1f2328}
main{padding:8px 24px 24px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:16px 0}
h2{font-size:16px;margin:0 0 10px}h3{font-size:15px;margin:14px 0 4px}
.chips{margin:0 0 10px;display:flex;gap:8px;flex-wrap:wrap}
.chip{padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px;background:#eaeef2}
.chip.violated{background:#ffebe9;color:var(--red)}.chip.expected_disruption{background:#fff8c5;color:#7d4e00}
.chip.held{background:#dafbe1;color:var(--green)}.chip.not_examined{background:#eaeef2;color:#424a53}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:#f6f8fa}
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.desc{color:var(--muted);font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap;color:#fff}
.badge.violated{background:var(--red)}.badge.expected_disruption{background:var(--amber);color:#1f2328}
.badge.held{background:var(--green)}.badge.not_examined{background:var(--grey)}
a{color:var(--blue);text-decoration:none}a:hover{text-decoration:underline}
.note{color:var(--muted);font-size:13px}
.controls{display:flex;align-items:center;gap:6px;margin-bottom:8px;flex-wrap:wrap}
.controls button{border:1px solid var(--line);background:#f6f8fa;border-radius:6px;padding:3px 10px;font-size:14px;cursor:pointer}
.controls button:hover{background:#eaeef2}
.hint{color:var(--muted);font-size:12px;margin-left:6px}
.legend{margin-left:auto;font-size:12px;color:var(--muted)}
.lg{display:inline-block;width:14px;height:10px;border-radius:2px;margin:0 4px 0 10px;vertical-align:-1px}
.lg.unexpected{background:var(--red)}.lg.expected{background:var(--amber)}
.lg.open{background:repeating-linear-gradient(45deg,var(--red) 0 3px,#ff818266 3px 6px)}
.lg.test{background:#8fb8ed}.lg.failedtest{background:#fff;border:2px solid var(--red)}.lg.phase{background:#8250df55;border-left:2px solid #8250df}
.timeline{position:relative;user-select:none;cursor:grab;border:1px solid var(--line);border-radius:6px;overflow:hidden}
.timeline.dragging{cursor:grabbing}
.tl-row{display:flex;border-bottom:1px solid #eaeef2;min-height:26px}
.tl-row:last-of-type{border-bottom:0}
.tl-row.inv:hover{background:#f6f8fa}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:6px;vertical-align:0}
.dot.violated{background:var(--red)}.dot.expected_disruption{background:var(--amber)}.dot.held{background:var(--green)}.dot.not_examined{background:var(--grey)}
.tl-label{width:var(--label);flex:none;padding:4px 8px;font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;border-right:1px solid var(--line);background:#fbfcfd}
.tl-track{position:relative;flex:1;overflow:hidden;min-height:24px}
.tl-axis-row{height:30px;background:#f6f8fa}
.tick{position:absolute;top:0;height:100%;border-left:1px solid var(--line);padding:2px 4px;font-size:11px;color:var(--muted);white-space:nowrap;line-height:1.25}
.iv{position:absolute;top:5px;height:16px;min-width:3px;border-radius:3px;background:var(--red);box-shadow:0 0 0 1px #a40e2640}
.iv.expected{background:var(--amber);box-shadow:0 0 0 1px #9a670040}
.iv.open{background-image:repeating-linear-gradient(45deg,transparent 0 4px,#ffffff77 4px 8px)}
.iv:hover,.ann:hover{outline:2px solid var(--fg);z-index:2}
.ann.test{position:absolute;height:7px;min-width:2px;border-radius:2px;background:#8fb8ed}
.ann.test.failed{background:#fff;box-shadow:inset 0 0 0 2px var(--red)}
.ann.test.disruptive{background:var(--amber)}
.ann.phase{position:absolute;height:13px;line-height:13px;min-width:2px;background:#8250df22;border-left:2px solid #8250df;font-size:10px;color:#6639ba;overflow:hidden;white-space:nowrap;padding-left:3px}
.tl-overlay{position:absolute;inset:0;display:flex;pointer-events:none}
.tl-overlay .tl-label{background:transparent;border-right:0}
.phase-line{position:absolute;top:30px;bottom:0;border-left:1px dashed #8250df99}
.tl-overlay .gap{position:absolute;top:30px;bottom:0;min-width:2px;background:repeating-linear-gradient(135deg,#8c959f44 0 6px,#8c959f22 6px 12px);border-left:1px solid #8c959f;border-right:1px solid #8c959f}
.lg.gap{background:repeating-linear-gradient(135deg,#8c959f88 0 3px,#8c959f33 3px 6px)}
#tip{position:fixed;z-index:10;max-width:560px;background:#24292f;color:#fff;padding:8px 10px;border-radius:6px;font-size:12px;box-shadow:0 4px 16px #0004;pointer-events:none;white-space:pre-wrap;word-break:break-word}
#tip b{color:#ffd8b5}
table.violations td{font-size:12px}
table.violations tr.expected td{background:#fffbdd}
.err{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;word-break:break-word}
.err.last{color:var(--muted)}
ul{margin:0;padding-left:16px}
.tag{display:inline-block;background:#fff8c5;color:#7d4e00;border-radius:8px;padding:0 6px;font-size:11px}
.meta{margin:2px 0;font-size:12px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;background:#eff1f3;padding:0 4px;border-radius:4px}
footer{color:var(--muted);font-size:12px;padding:0 24px 24px}
"#;

const JS: &str = r##"
(function(){
  "use strict";
  var body = document.body;
  var full0 = Number(body.dataset.fullStart), full1 = Number(body.dataset.fullEnd);
  var runStart = Number(body.dataset.runStart);
  var v0 = full0, v1 = full1;
  var MIN_SPAN = 1000;
  var timeline = document.getElementById("timeline");
  var axis = document.getElementById("axis");
  var tip = document.getElementById("tip");
  var items = timeline ? Array.prototype.slice.call(timeline.querySelectorAll("[data-start]")) : [];
  var intervals = items.filter(function(e){ return e.classList.contains("iv"); });

  function pad(n){ return (n < 10 ? "0" : "") + n; }
  function wall(ms){ var d = new Date(ms); return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()); }
  function dur(ms){
    var s = ms / 1000;
    if (s < 60) return (Math.round(s * 10) / 10) + "s";
    var m = Math.floor(s / 60); s = Math.round(s - m * 60);
    if (m < 60) return m + "m" + pad(s) + "s";
    return Math.floor(m / 60) + "h" + pad(m % 60) + "m";
  }
  function rel(ms){ var sign = ms < 0 ? "-" : "+"; return sign + dur(Math.abs(ms)); }

  function render(){
    var span = v1 - v0;
    items.forEach(function(e){
      var s = Number(e.dataset.start), t = Number(e.dataset.end);
      e.style.left = ((s - v0) / span * 100) + "%";
      e.style.width = (Math.max(0, t - s) / span * 100) + "%";
    });
    drawAxis(span);
    body.dataset.viewStart = String(Math.round(v0));
    body.dataset.viewEnd = String(Math.round(v1));
    intervals.forEach(function(e){
      var track = e.parentNode.getBoundingClientRect(), r = e.getBoundingClientRect();
      if (track.width > 0) {
        e.dataset.renderedLeft = ((r.left - track.left) / track.width).toFixed(5);
        e.dataset.renderedRight = ((r.right - track.left) / track.width).toFixed(5);
      }
    });
  }

  function drawAxis(span){
    if (!axis) return;
    while (axis.firstChild) axis.removeChild(axis.firstChild);
    var steps = [1,2,5,10,15,30,60,120,300,600,900,1800,3600,7200,10800,21600,43200,86400];
    var width = axis.getBoundingClientRect().width || 1000;
    var want = Math.max(2, Math.floor(width / 110));
    var step = steps[steps.length - 1] * 1000;
    for (var i = 0; i < steps.length; i++) { if (span / (steps[i] * 1000) <= want) { step = steps[i] * 1000; break; } }
    var first = runStart + Math.ceil((v0 - runStart) / step) * step;
    for (var t = first; t <= v1; t += step) {
      var d = document.createElement("div");
      d.className = "tick";
      d.style.left = ((t - v0) / span * 100) + "%";
      d.textContent = rel(t - runStart) + "\n" + wall(t);
      d.style.whiteSpace = "pre";
      axis.appendChild(d);
    }
  }

  function clamp(){
    var span = Math.max(MIN_SPAN, Math.min(full1 - full0, v1 - v0));
    if (v0 < full0) { v0 = full0; }
    if (v0 + span > full1) { v0 = full1 - span; }
    v1 = v0 + span;
  }
  function zoom(factor, at){
    var span = v1 - v0;
    var c = at === undefined ? v0 + span / 2 : at;
    var ns = Math.max(MIN_SPAN, Math.min(full1 - full0, span * factor));
    v0 = c - (c - v0) / span * ns; v1 = v0 + ns; clamp(); render();
  }
  function timeAt(clientX){
    var r = axis.getBoundingClientRect();
    var f = Math.min(1, Math.max(0, (clientX - r.left) / r.width));
    return v0 + f * (v1 - v0);
  }
  document.getElementById("zoom-in").addEventListener("click", function(){ zoom(0.5); });
  document.getElementById("zoom-out").addEventListener("click", function(){ zoom(2); });
  document.getElementById("zoom-reset").addEventListener("click", function(){ v0 = full0; v1 = full1; render(); });
  document.addEventListener("keydown", function(ev){
    if (ev.target && /INPUT|TEXTAREA/.test(ev.target.tagName)) return;
    if (ev.key === "+" || ev.key === "=") zoom(0.5);
    else if (ev.key === "-") zoom(2);
    else if (ev.key === "0") { v0 = full0; v1 = full1; render(); }
  });
  if (timeline) {
    timeline.addEventListener("wheel", function(ev){
      ev.preventDefault();
      zoom(ev.deltaY > 0 ? 1.25 : 0.8, timeAt(ev.clientX));
    }, {passive: false});
    var drag = null;
    timeline.addEventListener("mousedown", function(ev){ drag = {x: ev.clientX, v0: v0, v1: v1}; timeline.classList.add("dragging"); });
    window.addEventListener("mouseup", function(){ drag = null; timeline.classList.remove("dragging"); });
    window.addEventListener("mousemove", function(ev){
      if (!drag) return;
      var r = axis.getBoundingClientRect();
      var dt = (ev.clientX - drag.x) / r.width * (drag.v1 - drag.v0);
      v0 = drag.v0 - dt; v1 = drag.v1 - dt; clamp(); render();
    });
    timeline.addEventListener("dblclick", function(ev){ zoom(0.5, timeAt(ev.clientX)); });
    timeline.addEventListener("mouseover", function(ev){
      var e = ev.target.closest ? ev.target.closest(".iv,.ann") : null;
      if (!e) { tip.hidden = true; return; }
      show(e, ev);
    });
    timeline.addEventListener("mousemove", function(ev){ if (!tip.hidden) place(ev); });
    timeline.addEventListener("mouseleave", function(){ tip.hidden = true; });
  }

  function line(label, value){
    var div = document.createElement("div");
    var b = document.createElement("b"); b.textContent = label + ": ";
    div.appendChild(b); div.appendChild(document.createTextNode(value));
    tip.appendChild(div);
  }
  function show(e, ev){
    while (tip.firstChild) tip.removeChild(tip.firstChild);
    var d = e.dataset, s = Number(d.start), t = Number(d.end);
    var open = d.open === "true";
    var when = new Date(s).toISOString() + " → " + (open ? "still open/running" : new Date(t).toISOString());
    if (e.classList.contains("iv")) {
      line(d.invariant, (d.expected === "true" ? "expected disruption" : "violation") + ", " + dur(t - s) + (open ? "+" : ""));
      line("when", when);
      line("class", d.class + ", " + d.samples + " bad samples");
      if (d.endedByGap === "true") line("ended", "by a gap: the agent went down while it was open");
      if (d.firstError) line("first error", d.firstError);
      if (d.error && d.error !== d.firstError) line("last error", d.error);
      line("tests running", d.tests ? d.tests + (Number(d.testsOmitted) > 0 ? "\n… and " + d.testsOmitted + " more" : "") : "none recorded");
      if (d.expectedBy) line("expected, because of", d.expectedBy);
    } else {
      line(d.kind, d.name);
      line("when", when + " (" + dur(t - s) + ")");
      if (d.outcome) line("outcome", d.outcome);
    }
    tip.hidden = false;
    place(ev);
  }
  function place(ev){
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, hgt = tip.offsetHeight;
    if (x + w > window.innerWidth - 8) x = Math.max(8, ev.clientX - w - 14);
    if (y + hgt > window.innerHeight - 8) y = Math.max(8, ev.clientY - hgt - 14);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  window.addEventListener("resize", render);
  // A view in the address (#view=START-END, ms since the epoch) opens zoomed, so a link
  // can point at one incident; zooming keeps the address up to date.
  var m = /view=(\d+)-(\d+)/.exec(window.location.hash || "");
  if (m) { v0 = Number(m[1]); v1 = Number(m[2]); clamp(); }
  var baseRender = render;
  render = function(){
    baseRender();
    if (history.replaceState && (v0 !== full0 || v1 !== full1)) {
      try { history.replaceState(null, "", "#view=" + Math.round(v0) + "-" + Math.round(v1)); } catch (e) {}
    }
  };
  render();
  body.dataset.ready = "true";
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            h("<script>alert('x')</script> & \"q\"\u{0}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;\u{FFFD}"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(1.25), "1.2s");
        assert_eq!(human(125.0), "2m05s");
        assert_eq!(human(3725.0), "1h02m");
    }
}
