//! `ember-loadtest soak`: constant load for a long time; the verdict is on the worker's memory,
//! which must stay flat once warm (a leak shows as steady growth), and on lost requests.

use crate::load::LoadReport;
use ember::results::ANSWERED_WINDOW;
use serde::Serialize;
use std::time::Duration;

/// How far above its warm level the worker's RSS may go and still count as flat: 10 % of it,
/// and never less than `RSS_SLACK`.
pub const RSS_TOLERANCE: f64 = 0.10;

/// The least growth allowed: the allocator keeps the high-water mark of a burst (a backlog
/// drained, a stall of the broker), a few MiB whatever the worker's size; a leak, growing with
/// every request, passes any fixed allowance in a long enough soak.
pub const RSS_SLACK: u64 = 8 << 20;

/// Open file descriptors the worker may gain after the warm-up (a reconnect in progress, a
/// model file read): a leak of connections or files grows past it.
pub const FD_SLACK: u64 = 16;

/// The warm-up at least, as a share of the run (allocator pools, batch buffers filling).
const WARM_UP_SHARE: f64 = 0.2;

/// How long a soak at `rate` requests per second warms up before memory must stay flat: 20 % of
/// `duration`, and at least until the worker's bounded memory of answered ids
/// (`ember::results::ANSWERED_WINDOW`) has filled, with a margin. Errors when that leaves less
/// than half the run to judge.
pub fn warm_up(duration: Duration, rate: f64) -> anyhow::Result<Duration> {
    let fill = Duration::from_secs_f64(1.2 * ANSWERED_WINDOW as f64 / rate);
    let warm_up = fill.max(duration.mul_f64(WARM_UP_SHARE));
    anyhow::ensure!(
        warm_up <= duration / 2,
        "a {}-long soak at {rate} req/s is too short to judge memory: the worker remembers the \
         last {ANSWERED_WINDOW} answered ids, filled after {:.0} s; soak for at least {:.0} s",
        humantime::format_duration(duration),
        fill.as_secs_f64(),
        2.0 * fill.as_secs_f64()
    );
    Ok(warm_up)
}

/// The soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Seconds of warm-up before memory is judged.
    pub warm_up_s: f64,
    /// Worker RSS at the first sample after the warm-up, bytes.
    pub rss_warm_bytes: Option<u64>,
    /// Highest RSS after the warm-up, bytes.
    pub rss_peak_bytes: Option<u64>,
    /// RSS at the end, bytes.
    pub rss_end_bytes: Option<u64>,
    /// Peak ÷ warm − 1.
    pub rss_growth: Option<f64>,
    /// Growth allowed: the greater of `RSS_TOLERANCE` × warm and `RSS_SLACK`, bytes.
    pub rss_allowed_growth_bytes: Option<u64>,
    /// Whether the peak stayed within the allowed growth of the warm level.
    pub rss_flat: Option<bool>,
    /// Worker's open file descriptors at the first sample after the warm-up, and the most after.
    pub fds_warm: Option<u64>,
    /// The most open file descriptors after the warm-up.
    pub fds_peak: Option<u64>,
    /// Whether the open file descriptors stayed within `FD_SLACK` of their warm count.
    pub fds_flat: Option<bool>,
    /// The smallest leak per answered request this soak would have failed on: the allowed
    /// growth ÷ the answers after the warm-up, bytes.
    pub leak_detection_limit_bytes_per_request: Option<f64>,
    /// The load run, with its timeline.
    pub load: LoadReport,
}

impl SoakReport {
    /// Reads the memory verdict off `load`'s timeline after `warm_up` (none when memory was not
    /// sampled).
    pub fn new(load: LoadReport, warm_up: Duration) -> Self {
        let warm: Vec<u64> = load
            .timeline
            .iter()
            .filter(|s| s.t_s > warm_up.as_secs_f64())
            .filter_map(|s| s.worker_rss_bytes)
            .collect();
        let (first, peak, last) = (
            warm.first().copied(),
            warm.iter().copied().max(),
            warm.last().copied(),
        );
        let allowed = first.map(|w| ((w as f64 * RSS_TOLERANCE) as u64).max(RSS_SLACK));
        let fds: Vec<u64> = load
            .timeline
            .iter()
            .filter(|s| s.t_s > warm_up.as_secs_f64())
            .filter_map(|s| s.worker_open_fds)
            .collect();
        let (fds_warm, fds_peak) = (fds.first().copied(), fds.iter().copied().max());
        let judged = load.timeline.last().map_or(0.0, |s| s.t_s) - warm_up.as_secs_f64();
        let answers_judged = load.throughput_rps * judged.max(0.0);
        Self {
            warm_up_s: warm_up.as_secs_f64(),
            rss_warm_bytes: first,
            rss_peak_bytes: peak,
            rss_end_bytes: last,
            rss_growth: first.zip(peak).map(|(w, p)| p as f64 / w as f64 - 1.0),
            rss_allowed_growth_bytes: allowed,
            rss_flat: first
                .zip(peak)
                .zip(allowed)
                .map(|((w, p), allowed)| p <= w + allowed),
            fds_warm,
            fds_peak,
            fds_flat: fds_warm
                .zip(fds_peak)
                .map(|(warm, peak)| peak <= warm + FD_SLACK),
            leak_detection_limit_bytes_per_request: allowed
                .filter(|_| answers_judged >= 1.0)
                .map(|a| a as f64 / answers_judged),
            load,
        }
    }

    /// Whether the soak passed: nothing lost, memory and open files flat (when sampled).
    pub fn passed(&self) -> bool {
        self.load.lost == 0 && self.rss_flat != Some(false) && self.fds_flat != Some(false)
    }
}

/// A Markdown summary of `report`.
pub fn markdown(report: &SoakReport) -> String {
    let mib = |b: Option<u64>| {
        b.map_or("-".into(), |b| {
            format!("{:.1}", b as f64 / (1 << 20) as f64)
        })
    };
    let mut out = crate::load::markdown(&report.load);
    out += &match (report.rss_growth, report.rss_allowed_growth_bytes) {
        (Some(growth), Some(allowed)) => format!(
            "\nworker RSS after {:.0} s of warm-up: {} MiB, peak {} MiB, end {} MiB: growth {:+.1} %, \
             {} (allowed {} MiB); a leak of {:.1} bytes per request or more would have failed it\n",
            report.warm_up_s,
            mib(report.rss_warm_bytes),
            mib(report.rss_peak_bytes),
            mib(report.rss_end_bytes),
            growth * 100.0,
            if report.rss_flat == Some(true) {
                "flat"
            } else {
                "NOT flat"
            },
            mib(Some(allowed)),
            report
                .leak_detection_limit_bytes_per_request
                .unwrap_or(f64::NAN)
        ),
        _ => "\nworker RSS not sampled (pass --worker-pid with --external)\n".into(),
    };
    if let (Some(warm), Some(peak), Some(flat)) =
        (report.fds_warm, report.fds_peak, report.fds_flat)
    {
        out += &format!(
            "worker open file descriptors (sockets included) after the warm-up: {warm}, peak \
             {peak}: {} (allowed +{FD_SLACK})\n",
            if flat { "flat" } else { "NOT flat" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Sample;

    fn load_with_rss(rss_mib: &[u64]) -> LoadReport {
        let overall = crate::load::LaneReport {
            model: "*".into(),
            lane: "*".into(),
            answered: 10,
            errors: 0,
            p50_ms: 1.0,
            p90_ms: 1.0,
            p99_ms: 1.0,
            p999_ms: 1.0,
            max_ms: 1.0,
        };
        let mut load = LoadReport {
            sent: 10,
            answered: 10,
            lost: 0,
            still_queued: 0,
            duplicates: 0,
            publish_failures: 0,
            errors: Default::default(),
            duration_s: 10.0,
            throughput_rps: 1.0,
            offered_rps: Some(1.0),
            first_answer_s: None,
            answers: Vec::new(),
            lanes: Vec::new(),
            overall,
            timeline: Vec::new(),
        };
        load.timeline = rss_mib
            .iter()
            .enumerate()
            .map(|(i, mib)| Sample {
                t_s: (i + 1) as f64,
                answered_rps: 1.0,
                p50_ms: 1.0,
                p99_ms: 1.0,
                max_ms: 1.0,
                worker_rss_bytes: Some(mib << 20),
                worker_cpu_cores: None,
                worker_open_fds: Some(20 + i as u64 % 2),
            })
            .collect();
        load
    }

    #[test]
    fn the_warm_up_outlasts_the_answered_id_memory() {
        let minute = Duration::from_secs(60);
        assert_eq!(warm_up(10 * minute, 10_000.0).unwrap(), 2 * minute);
        let slow = warm_up(60 * minute, 100.0).unwrap();
        assert!(slow > Duration::from_secs(786), "{slow:?}");
        let error = warm_up(10 * minute, 100.0).unwrap_err().to_string();
        assert!(error.contains("too short"), "{error}");
    }

    #[test]
    fn memory_is_judged_after_the_warm_up() {
        // Growth while warming up (the first 20 %) is allowed; 100 → 105 after is flat.
        let flat = SoakReport::new(
            load_with_rss(&[20, 60, 100, 102, 105, 101, 103, 100, 104, 100]),
            Duration::from_secs(2),
        );
        assert_eq!(flat.rss_warm_bytes, Some(100 << 20));
        assert_eq!(flat.rss_peak_bytes, Some(105 << 20));
        assert_eq!(flat.rss_flat, Some(true));
        assert_eq!((flat.fds_warm, flat.fds_peak), (Some(20), Some(21)));
        assert_eq!(flat.fds_flat, Some(true));
        assert!(flat.passed());
        // 10 MiB allowed over the 8 answers after the warm-up (1 per second).
        let limit = flat.leak_detection_limit_bytes_per_request.unwrap();
        assert!((limit - (10 << 20) as f64 / 8.0).abs() < 1.0, "{limit}");

        // A small worker may keep a burst's high-water mark: 40 → 46 MiB is within the slack.
        let step = SoakReport::new(
            load_with_rss(&[20, 30, 40, 40, 40, 46, 46, 46, 46, 46]),
            Duration::from_secs(2),
        );
        assert_eq!(step.rss_allowed_growth_bytes, Some(RSS_SLACK));
        assert!(step.passed());

        let leak = SoakReport::new(
            load_with_rss(&[20, 60, 100, 104, 108, 112, 116, 120, 124, 128]),
            Duration::from_secs(2),
        );
        assert_eq!(leak.rss_flat, Some(false));
        assert!((leak.rss_growth.unwrap() - 0.28).abs() < 1e-9);
        assert!(!leak.passed());
    }

    #[test]
    fn open_files_growing_after_the_warm_up_fail_the_soak() {
        let mut load = load_with_rss(&[100; 10]);
        for (i, sample) in load.timeline.iter_mut().enumerate() {
            sample.worker_open_fds = Some(20 + 5 * i as u64);
        }
        let report = SoakReport::new(load, Duration::from_secs(2));
        assert_eq!((report.fds_warm, report.fds_peak), (Some(30), Some(65)));
        assert_eq!(report.fds_flat, Some(false));
        assert_eq!(report.rss_flat, Some(true));
        assert!(!report.passed());
        assert!(
            markdown(&report).contains("NOT flat"),
            "{}",
            markdown(&report)
        );
    }
}
