//! Throughput of `Evaluator::ingest` for each condition kind.
//!
//! The stream is what a day of a healthy-but-imperfect target looks like: one sample a
//! second, mostly ok with 20-80 ms latency, and every ~1 000 samples a burst of 3-12
//! failures (timeouts turning into refused connections), a few slow answers, gauge
//! excursions and counter increments and resets. The goal is >= 5 M samples/s on one core
//! for availability and threshold.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use invariant_agent::config::Condition;
use invariant_agent::eval::Evaluator;
use invariant_agent::sample::{ErrorClass, Observation, ProbeError, Sample, Timestamp};

/// Samples per benchmark iteration.
const SAMPLES: usize = 100_000;

/// A small deterministic generator, so runs are comparable.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The realistic stream; `value` gives each sample's value (gauge or counter).
fn stream(mut value: impl FnMut(&mut XorShift, usize) -> f64) -> Vec<Sample> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut burst_left = 0u64;
    let start = 1_767_225_600_000; // 2026-01-01
    for i in 0..SAMPLES {
        let at = Timestamp(start + i as i64 * 1000);
        if burst_left == 0 && rng.below(1000) == 0 {
            burst_left = 3 + rng.below(10);
        }
        let (latency, observation) = if burst_left > 0 {
            burst_left -= 1;
            let class = if burst_left > 2 {
                ErrorClass::Timeout
            } else {
                ErrorClass::ConnectionRefused
            };
            let message = match class {
                ErrorClass::Timeout => "no answer within 10s",
                _ => "connect to 10.0.0.1:6443: connection refused",
            };
            (
                Duration::from_secs(10),
                Observation::Failed(ProbeError::new(class, message)),
            )
        } else {
            let slow = rng.below(500) == 0;
            let ms = if slow {
                1200 + rng.below(800)
            } else {
                20 + rng.below(60)
            };
            let v = value(&mut rng, i);
            (
                Duration::from_millis(ms),
                Observation::Ok { value: Some(v) },
            )
        };
        samples.push(Sample {
            at,
            latency,
            observation,
        });
    }
    samples
}

fn bench_condition(c: &mut Criterion, name: &str, condition: Condition, samples: &[Sample]) {
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(samples.len() as u64));
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || Evaluator::new(&condition, Duration::from_secs(1)),
            |e| {
                for s in samples {
                    black_box(e.ingest(black_box(s)));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let five_min = Duration::from_secs(300);
    // A gauge that leaves [0, 100] now and then.
    let gauge = stream(|rng, _| {
        if rng.below(2000) == 0 {
            150.0
        } else {
            rng.below(90) as f64
        }
    });
    // A counter that rarely increments and restarts about once a day.
    let mut counter = 0.0;
    let counter_stream = stream(move |rng, i| {
        if i % 86_400 == 86_399 {
            counter = 0.0;
        } else if rng.below(5000) == 0 {
            counter += 1.0;
        }
        counter
    });
    bench_condition(
        c,
        "availability",
        Condition::Availability {
            target_percent: 99.9,
            window: five_min,
        },
        &gauge,
    );
    bench_condition(
        c,
        "latency",
        Condition::Latency {
            quantile: 0.99,
            max: Duration::from_secs(1),
            window: five_min,
        },
        &gauge,
    );
    bench_condition(
        c,
        "threshold",
        Condition::Threshold {
            min: Some(0.0),
            max: Some(100.0),
            for_duration: Duration::from_secs(30),
        },
        &gauge,
    );
    // Worst case for messages: every sample out of bounds with a new value, so each
    // one re-renders the open interval's `last_error`.
    let always_high = stream(|rng, _| 200.0 + rng.below(1000) as f64);
    bench_condition(
        c,
        "threshold_violated",
        Condition::Threshold {
            min: Some(0.0),
            max: Some(100.0),
            for_duration: Duration::from_secs(30),
        },
        &always_high,
    );
    bench_condition(
        c,
        "increase_run",
        Condition::Increase {
            max: 0.0,
            window: None,
        },
        &counter_stream,
    );
    bench_condition(
        c,
        "increase_window",
        Condition::Increase {
            max: 0.0,
            window: Some(Duration::from_secs(3600)),
        },
        &counter_stream,
    );
}

criterion_group!(benches, ingest);
criterion_main!(benches);
