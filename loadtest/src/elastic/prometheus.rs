//! Prometheus, as KEDA's `prometheus` scaler queries it for `sum(rate(ember_requests_total[W]))`:
//! the Deployment's ready pods scraped every [`SCRAPE_INTERVAL_S`] (their `/metrics`, as the
//! ServiceMonitor in `manifests/monitoring` has it), each pod's rate over the window from its
//! first and last sample in it, summed.

use super::keda::{Mode, QueueStats, Trigger};
use std::time::Duration;

/// The ServiceMonitor's scrape interval, cluster seconds.
pub const SCRAPE_INTERVAL_S: f64 = 15.0;

/// The counter the query rates: requests answered (every lane and code).
const COUNTER: &str = "ember_requests_total";

/// One scrape of one pod.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    t_s: f64,
    pod: usize,
    total: f64,
}

/// Scraped samples, in time order.
pub struct Prometheus {
    client: reqwest::Client,
    samples: Vec<Sample>,
    next_scrape_s: f64,
}

impl Prometheus {
    /// Nothing scraped yet.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
            samples: Vec::new(),
            next_scrape_s: 0.0,
        })
    }

    /// When the next scrape is due.
    pub fn next_scrape_s(&self) -> f64 {
        self.next_scrape_s
    }

    /// Scrapes `targets` (pod number, telemetry URL) if a scrape is due at `now_s`, every
    /// `interval_s`; a pod that does not answer is skipped, as a failed scrape is.
    pub async fn scrape(&mut self, now_s: f64, interval_s: f64, targets: &[(usize, String)]) {
        if now_s < self.next_scrape_s {
            return;
        }
        self.next_scrape_s = now_s + interval_s;
        for (pod, url) in targets {
            let text = match self.client.get(format!("{url}/metrics")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => continue,
            };
            if let Some(total) = counter_total(&text) {
                self.samples.push(Sample {
                    t_s: now_s,
                    pod: *pod,
                    total,
                });
            }
        }
    }

    /// `sum(rate(ember_requests_total[window]))` at `now_s`: per pod with two samples or more
    /// in the window, the increase between its first and last over their distance; summed.
    pub fn rate(&self, now_s: f64, window_s: f64) -> f64 {
        let mut first_last: std::collections::BTreeMap<usize, (Sample, Sample)> =
            Default::default();
        for sample in self
            .samples
            .iter()
            .filter(|s| s.t_s > now_s - window_s && s.t_s <= now_s)
        {
            first_last
                .entry(sample.pod)
                .and_modify(|(_, last)| *last = *sample)
                .or_insert((*sample, *sample));
        }
        first_last
            .values()
            .filter(|(first, last)| last.t_s > first.t_s)
            .map(|(first, last)| (last.total - first.total).max(0.0) / (last.t_s - first.t_s))
            .fold(0.0, |sum, rate| sum + rate)
    }

    /// Sets the answer rate of each `AnswerRate` trigger's `stats` at `now_s` (real seconds;
    /// windows are cluster seconds, Kubernetes' clocks `k` times faster).
    pub fn answer_rates(&self, triggers: &[Trigger], stats: &mut [QueueStats], now_s: f64, k: f64) {
        for (trigger, stats) in triggers.iter().zip(stats) {
            if let Mode::AnswerRate { window_s } = trigger.mode {
                stats.answer_rate = self.rate(now_s, window_s / k);
            }
        }
    }
}

/// The sum of the counter's series in a Prometheus text exposition; `None` where it has none
/// (no request answered yet).
fn counter_total(text: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(COUNTER)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_summed_over_its_series() {
        let text = "# TYPE ember_requests_total counter\n\
                    ember_requests_total{model=\"digits\",lane=\"realtime\",code=\"OK\"} 30\n\
                    ember_requests_total{model=\"digits\",lane=\"batch\",code=\"OK\"} 12\n\
                    ember_requests_total_other 99\n";
        assert_eq!(counter_total(text), Some(42.0));
        assert_eq!(counter_total("# nothing answered yet\n"), None);
    }

    #[test]
    fn rate_is_per_pod_over_the_window_and_summed() {
        let mut p = Prometheus::new().unwrap();
        let at = |t_s, pod, total| Sample { t_s, pod, total };
        p.samples = vec![
            at(0.0, 0, 0.0),
            at(15.0, 0, 30.0),
            at(30.0, 0, 90.0),
            at(30.0, 1, 500.0), // one sample only: no rate yet
            at(45.0, 0, 90.0),
            at(45.0, 1, 530.0),
        ];
        // Window (0, 45]: pod 0 from 30 to 90 over 30 s (2/s), pod 1 30 over 15 s (2/s).
        assert_eq!(p.rate(45.0, 45.0), 2.0 + 2.0);
        // Window (15, 45]: pod 0 answered nothing since 30 s.
        assert_eq!(p.rate(45.0, 30.0), 2.0);
        assert_eq!(p.rate(30.0, 60.0), 3.0);
        // Traffic stopped: the rate falls to 0 once the window holds only equal samples.
        p.samples.push(at(60.0, 0, 90.0));
        assert_eq!(p.rate(60.0, 15.0), 0.0);
        assert_eq!(p.rate(200.0, 60.0), 0.0);
    }
}
