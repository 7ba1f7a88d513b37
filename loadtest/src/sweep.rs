//! `ember-loadtest sweep`: one worker's throughput/latency curve, from light load to past
//! saturation, its capacity at a p99 target, and the KEDA scaler settings that follow.

use crate::load::{self, Arrival, LoadSpec, Target};
use crate::payloads;
use crate::ratios::scratch_repo;
use crate::worker::Worker;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// How to run the sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The broker.
    pub url: String,
    /// The `ember` binary to serve with.
    pub ember: PathBuf,
    /// Repository holding the digits model.
    pub model_repo: PathBuf,
    /// Largest batch of the worker.
    pub max_batch: usize,
    /// Rate steps, as fractions of the closed-loop maximum (e.g. 0.1 … 1.2).
    pub steps: Vec<f64>,
    /// Length of each step.
    pub step_duration: Duration,
    /// Latency objective: p99 of realtime requests.
    pub p99_target: Duration,
    /// Binary tensor data both ways instead of JSON.
    pub binary: bool,
}

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Offered requests per second (Poisson).
    pub offered_rps: f64,
    /// Answers per second.
    pub throughput_rps: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Never answered.
    pub lost: u64,
    /// CPU cores the worker kept busy.
    pub worker_cpu_cores: Option<f64>,
}

/// The curve and what it means for scaling.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Closed-loop maximum of one worker, requests per second.
    pub max_rps: f64,
    /// Every step, in offered-rate order.
    pub steps: Vec<Step>,
    /// Highest offered rate that kept up (≥ 95 % answered per second) within the p99 target.
    pub capacity_rps: Option<f64>,
    /// The p99 target, ms.
    pub p99_target_ms: f64,
    /// KEDA RabbitMQ scaler, `mode: MessageRate`: publish rate per replica (80 % of capacity).
    pub keda_message_rate_value: Option<u64>,
    /// KEDA RabbitMQ scaler, `mode: QueueLength`: backlog per replica that one replica clears
    /// within the p99 target at capacity (Little's law).
    pub keda_queue_length_value: Option<u64>,
    /// `activationValue`: scale from zero on the first waiting request.
    pub keda_activation_value: u64,
}

/// Runs the sweep against one freshly started worker.
pub async fn run(options: &SweepOptions) -> anyhow::Result<SweepReport> {
    let scratch = tempfile::tempdir()?;
    let run = std::process::id();
    let (model, echo) = (format!("lt-sweep-{run}"), format!("lt-sweep-echo-{run}"));
    scratch_repo(scratch.path(), &options.model_repo, &model, &echo).await?;
    let repo = scratch.path().to_str().unwrap_or_default();
    let batch = options.max_batch.to_string();
    let worker = Worker::start(
        &options.ember,
        &options.url,
        &[
            "--model",
            &model,
            "--model-repo",
            repo,
            "--max-batch-size",
            &batch,
        ],
    )
    .await?;
    let payloads = payloads::digits(10_000, options.binary);
    let spec = |arrival: Arrival, requests: usize, realtime_share: f64| LoadSpec {
        label: match arrival {
            Arrival::Poisson { rate } => format!("sweep {rate:.0}/s"),
            _ => "sweep closed-loop".to_owned(),
        },
        worker_pid: worker.pid(),
        targets: vec![Target {
            model: model.clone(),
            payloads: payloads.clone(),
        }],
        arrival,
        requests,
        realtime_share,
        deadline: None,
        seed: 11,
        drain: Duration::from_secs(30),
    };
    let closed = Arrival::Closed { in_flight: 512 };
    let max_rps = load::run(&options.url, &spec(closed, 20_000, 0.0))
        .await?
        .throughput_rps;
    eprintln!("closed-loop maximum: {max_rps:.0} req/s");
    let mut steps = Vec::new();
    for fraction in &options.steps {
        let rate = max_rps * fraction;
        let requests = (rate * options.step_duration.as_secs_f64()).max(20.0) as usize;
        let report = load::run(
            &options.url,
            &spec(Arrival::Poisson { rate }, requests, 1.0),
        )
        .await?;
        eprintln!(
            "offered {rate:>7.0}/s: {:>7.0}/s, p50 {:.2} ms, p99 {:.2} ms, lost {}",
            report.throughput_rps, report.overall.p50_ms, report.overall.p99_ms, report.lost
        );
        steps.push(Step {
            offered_rps: rate,
            throughput_rps: report.throughput_rps,
            p50_ms: report.overall.p50_ms,
            p99_ms: report.overall.p99_ms,
            lost: report.lost,
            worker_cpu_cores: report.worker_cpu_cores(),
        });
    }
    worker.stop().await?;
    let cleanup = AmqpTransport::connect(AmqpConfig::new(options.url.clone())).await?;
    for model in [&model, &echo] {
        cleanup.delete(model).await?;
    }
    let p99_target_ms = options.p99_target.as_secs_f64() * 1000.0;
    let capacity_rps = capacity(&steps, p99_target_ms);
    Ok(SweepReport {
        max_rps,
        steps,
        capacity_rps,
        p99_target_ms,
        keda_message_rate_value: capacity_rps.map(|c| (0.8 * c).floor().max(1.0) as u64),
        keda_queue_length_value: capacity_rps
            .map(|c| (c * options.p99_target.as_secs_f64()).ceil().max(1.0) as u64),
        keda_activation_value: 0,
    })
}

/// Highest offered rate that was kept up with (≥ 95 % of it answered per second) within the p99
/// target.
fn capacity(steps: &[Step], p99_target_ms: f64) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.p99_ms <= p99_target_ms && s.throughput_rps >= 0.95 * s.offered_rps)
        .map(|s| s.offered_rps)
        .reduce(f64::max)
}

/// A Markdown summary of `report`.
pub fn markdown(report: &SweepReport) -> String {
    let mut out = format!(
        "closed-loop maximum {:.0} req/s, p99 target {:.0} ms\n\n| offered req/s | answered req/s | p50 ms | p99 ms | lost | worker cores |\n|---|---|---|---|---|---|\n",
        report.max_rps, report.p99_target_ms
    );
    for s in &report.steps {
        out += &format!(
            "| {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |\n",
            s.offered_rps,
            s.throughput_rps,
            s.p50_ms,
            s.p99_ms,
            s.lost,
            s.worker_cpu_cores
                .map_or("-".to_owned(), |c| format!("{c:.2}"))
        );
    }
    match (
        report.capacity_rps,
        report.keda_message_rate_value,
        report.keda_queue_length_value,
    ) {
        (Some(capacity), Some(rate), Some(length)) => {
            out += &format!(
                "\ncapacity per replica at p99 ≤ {:.0} ms: {capacity:.0} req/s\n\nKEDA (rabbitmq trigger): \
                 mode MessageRate value \"{rate}\", or mode QueueLength value \"{length}\"; activationValue \"{}\"\n",
                report.p99_target_ms, report.keda_activation_value
            );
        }
        _ => out += "\nno step met the p99 target: lower the load steps or raise --p99-target\n",
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered_rps: f64, throughput_rps: f64, p99_ms: f64) -> Step {
        Step {
            offered_rps,
            throughput_rps,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            lost: 0,
            worker_cpu_cores: None,
        }
    }

    #[test]
    fn capacity_is_the_fastest_step_that_kept_up_within_the_target() {
        let steps = [
            step(100.0, 100.0, 5.0),
            step(500.0, 498.0, 20.0),
            step(900.0, 700.0, 30.0),  // fell behind
            step(800.0, 790.0, 150.0), // too slow
        ];
        assert_eq!(capacity(&steps, 100.0), Some(500.0));
        assert_eq!(capacity(&steps, 1.0), None);
    }
}
