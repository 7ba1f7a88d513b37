//! `ember-loadtest soak`: constant load for a long time; the verdict is on the worker's memory,
//! which must stay flat once warm (a leak shows as steady growth), and on lost requests.

use crate::load::LoadReport;
use serde::Serialize;

/// How far above its warm level the worker's RSS may go and still count as flat.
pub const RSS_TOLERANCE: f64 = 0.10;

/// Share of the run treated as warm-up (caches, allocator pools, batch buffers filling).
const WARM_UP: f64 = 0.2;

/// The soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Worker RSS at the first sample after the warm-up (the first 20 % of the run), bytes.
    pub rss_warm_bytes: Option<u64>,
    /// Highest RSS after the warm-up, bytes.
    pub rss_peak_bytes: Option<u64>,
    /// RSS at the end, bytes.
    pub rss_end_bytes: Option<u64>,
    /// Peak ÷ warm − 1.
    pub rss_growth: Option<f64>,
    /// Whether the peak stayed within `RSS_TOLERANCE` of the warm level.
    pub rss_flat: Option<bool>,
    /// The load run, with its timeline.
    pub load: LoadReport,
}

impl SoakReport {
    /// Reads the memory verdict off `load`'s timeline (none when memory was not sampled).
    pub fn new(load: LoadReport) -> Self {
        let end = load.timeline.last().map_or(0.0, |s| s.t_s);
        let warm: Vec<u64> = load
            .timeline
            .iter()
            .filter(|s| s.t_s > WARM_UP * end)
            .filter_map(|s| s.worker_rss_bytes)
            .collect();
        let (first, peak, last) = (
            warm.first().copied(),
            warm.iter().copied().max(),
            warm.last().copied(),
        );
        let growth = first.zip(peak).map(|(w, p)| p as f64 / w as f64 - 1.0);
        Self {
            rss_warm_bytes: first,
            rss_peak_bytes: peak,
            rss_end_bytes: last,
            rss_growth: growth,
            rss_flat: growth.map(|g| g <= RSS_TOLERANCE),
            load,
        }
    }

    /// Whether the soak passed: nothing lost, memory flat (when sampled).
    pub fn passed(&self) -> bool {
        self.load.lost == 0 && self.rss_flat != Some(false)
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
    out += &match report.rss_growth {
        Some(growth) => format!(
            "\nworker RSS: warm {} MiB, peak {} MiB, end {} MiB: growth {:+.1} % ({} within {:.0} %)\n",
            mib(report.rss_warm_bytes),
            mib(report.rss_peak_bytes),
            mib(report.rss_end_bytes),
            growth * 100.0,
            if report.rss_flat == Some(true) {
                "flat,"
            } else {
                "NOT flat,"
            },
            RSS_TOLERANCE * 100.0
        ),
        None => "\nworker RSS not sampled (pass --worker-pid with --external)\n".into(),
    };
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
            duplicates: 0,
            publish_failures: 0,
            errors: Default::default(),
            duration_s: 10.0,
            throughput_rps: 1.0,
            offered_rps: Some(1.0),
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
            })
            .collect();
        load
    }

    #[test]
    fn memory_is_judged_after_the_warm_up() {
        // Growth while warming up (the first 20 %) is allowed; 100 → 105 after is flat.
        let flat = SoakReport::new(load_with_rss(&[
            20, 60, 100, 102, 105, 101, 103, 100, 104, 100,
        ]));
        assert_eq!(flat.rss_warm_bytes, Some(100 << 20));
        assert_eq!(flat.rss_peak_bytes, Some(105 << 20));
        assert_eq!(flat.rss_flat, Some(true));
        assert!(flat.passed());

        let leak = SoakReport::new(load_with_rss(&[
            20, 60, 100, 104, 108, 112, 116, 120, 124, 128,
        ]));
        assert_eq!(leak.rss_flat, Some(false));
        assert!((leak.rss_growth.unwrap() - 0.28).abs() < 1e-9);
        assert!(!leak.passed());
    }
}
