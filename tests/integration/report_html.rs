//! The HTML report of a real run, opened in headless Chromium: the page's script runs,
//! the intervals sit where the report says, markup from error messages and test names is
//! inert, and a screenshot is taken (`target/report-screenshot.png`, for people to look
//! at). Fails, rather than skips, when Chromium is missing: scripts/install-test-deps
//! installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use serde_json::Value;

use crate::report::{DISRUPTIVE_TEST, INJECTED, SCRIPT_TEST, shared_run};
use crate::support::*;

fn chromium() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("Chromium is not installed; run scripts/install-test-deps (Debian package chromium)")
}

/// Runs headless Chromium on `page` with `args` and returns its stdout.
pub(crate) fn headless(page: &Path, args: &[&str]) -> String {
    headless_url(&format!("file://{}", page.display()), args)
}

/// Runs headless Chromium on `url` with `args` and returns its stdout.
fn headless_url(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1000",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Attributes of every element whose opening tag matches `tag_re`.
pub(crate) fn elements(dom: &str, tag_re: &str) -> Vec<std::collections::HashMap<String, String>> {
    let tag = Regex::new(tag_re).unwrap();
    let attr = Regex::new(r#"([a-zA-Z_:][-a-zA-Z0-9_:.]*)="([^"]*)""#).unwrap();
    tag.find_iter(dom)
        .map(|m| {
            attr.captures_iter(m.as_str())
                .map(|c| (c[1].to_string(), unescape(&c[2])))
                .collect()
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

pub(crate) fn body_attr(dom: &str, name: &str) -> String {
    let body = elements(dom, r"<body[^>]*>");
    body[0]
        .get(name)
        .unwrap_or_else(|| panic!("body has no {name}"))
        .clone()
}

#[test]
fn html_timeline_shows_intervals_where_the_report_says_in_a_real_browser() {
    let run = shared_run();
    let page = run.ws.report_dir().join("report.html");
    let report = run.ws.report();
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched from anywhere (the only URLs are the probes'
    // loopback targets, as escaped text).
    for needle in ["<link", "@import", " src=", "url(", "https://"] {
        assert!(!html.contains(needle), "{needle} in a self-contained page");
    }
    assert!(
        html.match_indices("http://")
            .all(|(i, _)| html[i..].starts_with("http://127.0.0.1")),
        "no external resources"
    );
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the page's own script"
    );

    let dom = headless(&page, &["--dump-dom"]);
    assert_eq!(
        body_attr(&dom, "data-ready"),
        "true",
        "the page's script ran to the end"
    );
    assert!(
        dom.contains("<title>Invariant report · 1234</title>"),
        "the injected script must not run (it would retitle the page)"
    );
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "no script element was injected"
    );
    assert!(
        dom.contains("&lt;script&gt;document.title="),
        "the injected markup is shown as text"
    );

    let full0: f64 = body_attr(&dom, "data-full-start").parse().unwrap();
    let full1: f64 = body_attr(&dom, "data-full-end").parse().unwrap();
    assert_eq!(
        body_attr(&dom, "data-view-start"),
        body_attr(&dom, "data-full-start")
    );
    let intervals = elements(&dom, r#"<div class="iv [^"]*"[^>]*>"#);
    let expected_count: usize = report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["violations"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        intervals.len(),
        expected_count,
        "one element per violation interval"
    );
    for inv in report["invariants"].as_array().unwrap() {
        let name = inv["name"].as_str().unwrap();
        let mine: Vec<_> = intervals
            .iter()
            .filter(|e| e["data-invariant"] == name)
            .collect();
        let violations = inv["violations"].as_array().unwrap();
        assert_eq!(mine.len(), violations.len(), "{name}");
        for (e, v) in mine.iter().zip(violations) {
            let start = ms(&v["start"]);
            assert_eq!(e["data-start"], start.to_string(), "{name}");
            match &v["end"] {
                Value::Null => assert_eq!(e["data-open"], "true"),
                end => assert_eq!(e["data-end"], ms(end).to_string(), "{name}"),
            }
            assert_eq!(e["data-expected"], v["expected"].to_string(), "{name}");
            // Where the browser actually drew it, as a fraction of the track.
            let left: f64 = e["data-rendered-left"].parse().unwrap();
            let want = (start as f64 - full0) / (full1 - full0);
            assert!(
                (left - want).abs() < 0.004,
                "{name}: drawn at {left}, report says {want}"
            );
            let end: f64 = e["data-end"].parse().unwrap();
            let right: f64 = e["data-rendered-right"].parse().unwrap();
            let want_right = (end - full0) / (full1 - full0);
            assert!(
                (right - want_right).abs() < 0.006,
                "{name}: right edge {right}, report says {want_right}"
            );
        }
    }
    // Hover details travel with the element: error, tests running, why it is expected.
    let expected = intervals
        .iter()
        .find(|e| e["data-invariant"] == "flaky-expected")
        .unwrap();
    assert_eq!(expected["class"], "iv expected");
    assert_eq!(expected["data-expected-by"], DISRUPTIVE_TEST);
    assert_eq!(
        expected["data-tests"],
        format!("{DISRUPTIVE_TEST}\n{SCRIPT_TEST}")
    );
    let injected = intervals
        .iter()
        .find(|e| e["data-invariant"] == "injected-error")
        .unwrap();
    assert!(
        injected["data-error"].contains(&format!("{INJECTED:?}")[..20]),
        "{injected:?}"
    );

    // Test and phase annotations are on the timeline too.
    let tests = elements(&dom, r#"<div class="ann test[^"]*"[^>]*>"#);
    assert_eq!(tests.len(), 3);
    assert!(
        tests
            .iter()
            .any(|t| t["data-name"] == SCRIPT_TEST && t["class"].contains("failed"))
    );
    assert!(
        tests
            .iter()
            .any(|t| t["data-name"] == DISRUPTIVE_TEST && t["class"].contains("disruptive"))
    );
    let phases = elements(&dom, r#"<div class="ann phase"[^>]*>"#);
    assert_eq!(phases.len(), 2);

    // The summary table is sorted by severity.
    let rows = elements(&dom, r#"<tr data-invariant="[^"]*" data-verdict="[^"]*">"#);
    let verdicts: Vec<&str> = rows.iter().map(|r| r["data-verdict"].as_str()).collect();
    assert_eq!(
        verdicts,
        [
            "violated",
            "violated",
            "not_examined",
            "expected_disruption",
            "held"
        ]
    );

    // Zoomed in on the outage through the address: the same interval now spans most of
    // the track, where the view says.
    let flaky = violations(&report, "flaky-availability");
    let (s, e) = (ms(&flaky[0]["start"]), ms(&flaky[0]["end"]));
    let (v0, v1) = (s - 1000, e + 1000);
    let zoomed = headless_url(
        &format!("file://{}#view={v0}-{v1}", page.display()),
        &["--dump-dom"],
    );
    assert_eq!(body_attr(&zoomed, "data-view-start"), v0.to_string());
    assert_eq!(body_attr(&zoomed, "data-view-end"), v1.to_string());
    let z = elements(&zoomed, r#"<div class="iv [^"]*"[^>]*>"#)
        .into_iter()
        .find(|e| e["data-invariant"] == "flaky-availability")
        .unwrap();
    let span = (v1 - v0) as f64;
    let left: f64 = z["data-rendered-left"].parse().unwrap();
    let right: f64 = z["data-rendered-right"].parse().unwrap();
    assert!((left - 1000.0 / span).abs() < 0.004, "zoomed left {left}");
    assert!(
        (right - (span - 1000.0) / span).abs() < 0.004,
        "zoomed right {right}"
    );

    // A screenshot for people; the file must be a real PNG of the page.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    headless(&page, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a blank page compresses far smaller: {} bytes",
        png.len()
    );
}
