//! The Prometheus/OpenMetrics text parser the metrics probe runs on every `/metrics` body
//! it scrapes: every sample, its labels and a label lookup, as the probe's selector does.
#![no_main]

use invariant_agent::probe::prometheus_text::{parse_line, samples};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The probe decodes the body lossily, so any bytes reach the parser as some text.
    let text = String::from_utf8_lossy(data);
    for sample in samples(&text) {
        match sample {
            Ok(sample) => {
                for (name, value) in sample.labels() {
                    std::hint::black_box((name, value));
                }
                std::hint::black_box(sample.label("le"));
            }
            Err(e) => drop(e.to_string()),
        }
    }
    for line in text.lines() {
        let _ = std::hint::black_box(parse_line(line));
    }
});
