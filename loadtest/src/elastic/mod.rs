//! `ember-loadtest elastic`: KEDA's control loop driving real workers. The ScaledObject of
//! `keda/rabbitmq` or `keda/servicebus` is emulated ([`keda`]) on its broker's metrics
//! ([`broker`]) and the workers' own ([`prometheus`]); each replica it asks for is a real
//! `ember serve` ([`fleet`]); traffic follows a trace ([`trace`]). Reports the wait of
//! the first request at zero replicas by phase, replica-seconds against an always-on fleet,
//! scale events, and lost and duplicate answers (both must be 0).
//!
//! `--time-scale K` runs Kubernetes' clocks (polling, cooldown, HPA sync and windows, pod start,
//! grace period) K times faster so a shipped five-minute cooldown fits a short run; Ember's own
//! start and compute stay real. Cluster-time figures are real seconds × K for the controller's
//! parts.

pub mod broker;
pub mod fleet;
pub mod keda;
pub mod prometheus;
pub mod trace;

use crate::load::{Arrival, LoadReport, LoadSpec, Target};
use anyhow::Context;
use broker::Broker;
use ember::protocol::Lane;
use ember::transport::queues;
use fleet::{Fleet, PodLife, PodSpec};
use keda::{Decider, Mode, ObjectController, ScaledJob, ScaledObject};
use prometheus::Prometheus;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the scalers' metrics may stay unreadable before the run fails.
const METRICS_PATIENCE: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct ElasticOptions {
    /// RabbitMQ's AMQP URL (where the ScaledObject's triggers are `rabbitmq`).
    pub url: String,
    /// RabbitMQ's management API (`http://host:15672`).
    pub management: String,
    /// The ScaledObjects' folder.
    pub keda_dir: PathBuf,
    /// The Deployment manifest (its `terminationGracePeriodSeconds`).
    pub deployment: PathBuf,
    /// Model served and loaded.
    pub model: String,
    /// The `ember` binary.
    pub ember: PathBuf,
    /// The model repository request shapes are read from.
    pub model_repo: PathBuf,
    /// The repository the replicas load from (a directory or `az://...`).
    pub replicas_repo: String,
    /// Further `ember serve` flags.
    pub serve_args: Vec<String>,
    /// Arrival times, seconds from the start (real time).
    pub arrivals: Vec<f64>,
    /// Length of the trace (real time).
    pub duration: Duration,
    /// Share of realtime requests.
    pub realtime_share: f64,
    /// Pod start delay, cluster time.
    pub pod_start: Duration,
    /// Kubernetes' clocks run this many times faster than real time.
    pub time_scale: f64,
    /// Changes to the ScaledObject read, to compare settings.
    pub overrides: Overrides,
    /// Send binary tensor data (where the broker carries it).
    pub binary: bool,
}

/// Changes to the scalers' settings, to compare others.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// The ScaledObject's `pollingInterval`, seconds.
    pub polling_s: Option<f64>,
    /// The ScaledObject's `cooldownPeriod`, seconds.
    pub cooldown_s: Option<f64>,
    /// Every trigger's target and activation value (ScaledObject and ScaledJobs) times this.
    pub value_factor: f64,
}

impl Overrides {
    fn apply(&self, object: &mut ScaledObject, jobs: &mut [ScaledJob]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.value_factor > 0.0 && self.polling_s.is_none_or(|p| p > 0.0),
            "the polling interval and the value factor must be positive"
        );
        object.polling_s = self.polling_s.unwrap_or(object.polling_s);
        object.cooldown_s = self.cooldown_s.unwrap_or(object.cooldown_s);
        let triggers = jobs.iter_mut().flat_map(|j| &mut j.triggers);
        for trigger in object.triggers.iter_mut().chain(triggers) {
            trigger.value *= self.value_factor;
            trigger.activation *= self.value_factor;
        }
        Ok(())
    }
}

/// One controller tick.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Real seconds since the start.
    pub t_s: f64,
    /// Each trigger's queue: ready + unacknowledged messages.
    pub messages: Vec<u64>,
    /// Each trigger's queue: publishes per second.
    pub publish_rates: Vec<f64>,
    /// Each `prometheus` trigger's answers per second (0 for the others).
    pub answer_rates: Vec<f64>,
    /// Replicas the controller wants.
    pub replicas: u32,
    /// Replicas ready.
    pub ready: usize,
}

/// A change of the replica count.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    /// Real seconds since the start.
    pub t_s: f64,
    /// New count.
    pub replicas: u32,
    /// `keda` (0 ↔ 1) or `hpa`.
    pub by: &'static str,
}

/// A request's wait at zero replicas, by phase (cluster seconds).
#[derive(Debug, Clone, Serialize)]
pub struct FromZero {
    /// When it was sent, real seconds since the start (NaN, so `null`, in percentiles).
    pub sent_s: f64,
    /// First request sent → the scaler's metric shows it, queued or published: RabbitMQ's
    /// statistics interval (`collect_statistics_interval`, 5 s by default: real time, never
    /// scaled); Service Bus's runtime properties count it at once.
    pub statistics_s: f64,
    /// Counted → KEDA decides 0 → 1 (its polling).
    pub controller_s: f64,
    /// Decision → container started (the pod-start delay).
    pub pod_start_s: f64,
    /// Container started → `ember serve` ready (connect, weights from the repository).
    pub ember_start_s: f64,
    /// Ready → the answer (queue, batch, compute, reply).
    pub answer_s: f64,
    /// The whole wait.
    pub total_s: f64,
}

/// What `elastic` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ElasticReport {
    /// The ScaledObject emulated.
    pub scaled_object: String,
    /// Its settings as emulated (after any overrides).
    pub polling_s: f64,
    /// `cooldownPeriod` as emulated.
    pub cooldown_s: f64,
    /// Each trigger's `value` as emulated.
    pub values: Vec<f64>,
    /// The pod-start delay, cluster seconds.
    pub pod_start_s: f64,
    /// Kubernetes' clocks ran this many times faster than real time.
    pub time_scale: f64,
    /// Requests sent and never answered. Must be 0.
    pub lost: u64,
    /// Answers received twice. Must be 0.
    pub duplicates: u64,
    /// The first request's wait for its answer, starting from zero replicas, cluster seconds.
    pub first_answer_from_zero_s: Option<f64>,
    /// That wait by phase.
    pub from_zero: Option<FromZero>,
    /// Every wake from zero: the first request sent while at zero, by phase.
    pub wakes: Vec<FromZero>,
    /// Over the wakes, each phase's median.
    pub from_zero_p50: Option<FromZero>,
    /// Over the wakes, each phase's 99th percentile (nearest rank: the largest below 100 wakes).
    pub from_zero_p99: Option<FromZero>,
    /// Pod lifetimes (Deployment and Jobs) summed, cluster seconds.
    pub replica_seconds: f64,
    /// An always-on fleet at the peak count over the same time, cluster seconds.
    pub always_on_replica_seconds: f64,
    /// Most replicas at once.
    pub peak_replicas: u32,
    /// Replicas ended with SIGKILL (the drain outlasted the grace period).
    pub killed: usize,
    /// Scale events.
    pub events: Vec<ScaleEvent>,
    /// Controller ticks.
    pub ticks: Vec<Tick>,
    /// The Deployment's pods.
    pub pods: Vec<PodLife>,
    /// The ScaledJobs' Jobs.
    pub job_pods: Vec<PodLife>,
    /// The trace's arrival times, real seconds (for the plot; not in the JSON).
    #[serde(skip)]
    pub arrivals: Vec<f64>,
    /// The traffic's own report (latency, timeline).
    pub load: LoadReport,
}

/// Runs the trace against a fleet the emulated ScaledObject sizes; ends once the trace is
/// answered and the fleet is back at its minimum (or a cooldown and window past the trace).
pub async fn run(options: &ElasticOptions) -> anyhow::Result<ElasticReport> {
    let (mut object, mut scaled_jobs) = scalers(options)?;
    options.overrides.apply(&mut object, &mut scaled_jobs)?;
    let deployment = std::fs::read_to_string(&options.deployment)
        .with_context(|| format!("reading {}", options.deployment.display()))?;
    let k = options.time_scale;
    anyhow::ensure!(k >= 1.0, "--time-scale must be at least 1");
    let grace = Duration::from_secs_f64(keda::grace_period_s(&deployment)? / k);
    let mut serve_args = vec![
        "--model".to_owned(),
        options.model.clone(),
        "--model-repo".to_owned(),
        options.replicas_repo.clone(),
    ];
    // Each pod's weight cache, empty at its start (the Deployment's emptyDir).
    let caches = tempfile::tempdir()?;
    serve_args.extend(options.serve_args.iter().cloned());
    let manifest = crate::production_manifest(&options.model_repo, &options.model).await?;
    let broker = Broker::for_triggers(&object.triggers, &options.url, &options.management)?;
    eprintln!(
        "ember-loadtest: {} through {}",
        object.name,
        broker.describe()
    );
    let binary = options.binary && broker.carries_binary();
    let spec = LoadSpec {
        targets: vec![Target {
            model: options.model.clone(),
            payloads: crate::payloads::for_manifest(&manifest, 1, binary),
        }],
        requests: options.arrivals.len(),
        arrival: Arrival::Trace {
            at: Arc::new(options.arrivals.clone()),
        },
        realtime_share: options.realtime_share,
        deadline: None,
        seed: 7,
        // Long enough for a cold start under the slowest controller settings.
        drain: Duration::from_secs_f64(
            (object.polling_s + keda::HPA_SYNC_S + options.pod_start.as_secs_f64()) / k + 120.0,
        ),
        label: "elastic".to_owned(),
        worker_pid: None,
    };
    broker.quiet(&object.triggers).await?;
    let started = Instant::now();
    let mut fleet = Fleet::new(
        PodSpec {
            ember: options.ember.clone(),
            env: broker.worker_env(),
            caches: caches.path().to_owned(),
            args: serve_args,
            start_delay: options.pod_start.div_f64(k),
            grace,
        },
        started,
    );
    // Each ScaledJob's Jobs: workers that exit once idle, polled on their own interval.
    let mut jobs = Vec::new();
    for job in scaled_jobs {
        let mut args = fleet.spec().args.clone();
        let idle = exit_when_idle(&job)?.div_f64(k);
        args.extend([
            "--exit-when-idle".to_owned(),
            format!("{}ms", idle.as_millis()),
        ]);
        let spec = PodSpec {
            args,
            grace: Duration::from_secs_f64(job.grace_s / k),
            caches: fleet.spec().caches.join(&job.name),
            ..fleet.spec().clone()
        };
        jobs.push((job, Fleet::new(spec, started), 0.0));
    }
    let broker = Arc::new(broker);
    let traffic = tokio::spawn({
        let (broker, spec) = (broker.clone(), spec.clone());
        async move { broker.offer(&spec).await }
    });
    // Scraped only where a trigger asks Prometheus.
    let mut prometheus = object
        .triggers
        .iter()
        .any(|t| matches!(t.mode, Mode::AnswerRate { .. }))
        .then(Prometheus::new)
        .transpose()?;
    let mut controller = ObjectController::new(object.clone(), 0);
    let (mut ticks, mut events) = (Vec::new(), Vec::new());
    // After the trace: until the fleet is back at its minimum, but no longer than a cooldown
    // and a scale-down window past it.
    let linger = (object.cooldown_s
        + object.down.window_s
        + 2.0 * object.polling_s
        + options.pod_start.as_secs_f64())
        / k;
    let give_up = options.duration.as_secs_f64() + linger + 120.0;
    // Every pod is stopped, and the traffic ended, however the loop ends.
    let controlled: anyhow::Result<()> = async {
        let mut last_read = Instant::now();
        loop {
            let now_s = started.elapsed().as_secs_f64();
            let jobs_done = jobs
                .iter()
                .all(|(_, pods, _)| pods.running_and_pending().0 == 0);
            let settled = traffic.is_finished() && controller.replicas() <= object.min && jobs_done;
            if (now_s > options.duration.as_secs_f64() && settled) || now_s > give_up {
                return Ok(());
            }
            if let Some(prometheus) = &mut prometheus {
                let interval_s = prometheus::SCRAPE_INTERVAL_S / k;
                let targets = fleet.scrape_targets();
                prometheus.scrape(now_s, interval_s, &targets).await;
            }
            // A scaler that cannot read its metric changes nothing (as KEDA does), for a while.
            let mut stats = match broker.queues(&object.triggers).await {
                Ok(stats) => {
                    last_read = Instant::now();
                    stats
                }
                Err(e) if last_read.elapsed() < METRICS_PATIENCE => {
                    eprintln!("ember-loadtest: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(prometheus) = &prometheus {
                prometheus.answer_rates(&object.triggers, &mut stats, now_s, k);
            }
            if let Some((replicas, by)) = controller.tick(now_s * k, &stats) {
                fleet.scale(replicas as usize);
                events.push(ScaleEvent {
                    t_s: now_s,
                    replicas,
                    by: match by {
                        Decider::Keda => "keda",
                        Decider::Hpa => "hpa",
                    },
                });
            }
            for (job, pods, next_poll_s) in &mut jobs {
                if now_s * k < *next_poll_s {
                    continue;
                }
                *next_poll_s = now_s * k + job.polling_s;
                // As for the ScaledObject: a metric that cannot be read changes nothing.
                let stats = match broker.queues(&job.triggers).await {
                    Ok(stats) => stats,
                    Err(e) => {
                        eprintln!("ember-loadtest: {}: {e:#}; next poll", job.name);
                        continue;
                    }
                };
                let (running, pending) = pods.running_and_pending();
                for _ in 0..job.jobs_to_create(&stats, running, pending) {
                    pods.add();
                }
            }
            ticks.push(Tick {
                t_s: now_s,
                messages: stats.iter().map(|s| s.messages).collect(),
                publish_rates: stats.iter().map(|s| s.publish_rate).collect(),
                answer_rates: stats.iter().map(|s| s.answer_rate).collect(),
                replicas: controller.replicas(),
                ready: fleet.ready(),
            });
            let next = jobs
                .iter()
                .map(|(_, _, next_poll_s)| *next_poll_s)
                .fold(controller.next_tick_s(), f64::min)
                / k;
            let next = prometheus
                .as_ref()
                .map_or(next, |p| next.min(p.next_scrape_s()));
            tokio::time::sleep(Duration::from_secs_f64((next - now_s).max(0.01))).await;
        }
    }
    .await;
    if controlled.is_err() {
        traffic.abort();
    }
    let pods = fleet.finish().await;
    let mut job_pods = Vec::new();
    for (_, pods, _) in jobs {
        job_pods.extend(pods.finish().await);
    }
    controlled?;
    let load = traffic.await??;
    Ok(report(
        options,
        &object,
        ticks,
        events,
        (pods, job_pods),
        load,
    ))
}

/// The ScaledObject whose triggers watch `options.model`'s queues, and the ScaledJobs that do.
fn scalers(options: &ElasticOptions) -> anyhow::Result<(ScaledObject, Vec<ScaledJob>)> {
    let scalers = keda::read_dir(&options.keda_dir)?;
    let queues = [Lane::Realtime, Lane::Batch].map(|lane| queues::requests(&options.model, lane));
    let watches = |triggers: &[keda::Trigger]| triggers.iter().any(|t| queues.contains(&t.queue));
    let object = scalers
        .objects
        .into_iter()
        .find(|o| watches(&o.triggers))
        .with_context(|| {
            format!(
                "no ScaledObject in {} watches {queues:?}",
                options.keda_dir.display()
            )
        })?;
    let jobs = scalers
        .jobs
        .into_iter()
        .filter(|j| watches(&j.triggers))
        .collect();
    Ok((object, jobs))
}

/// A ScaledJob's `--exit-when-idle` (cluster time), from its container's arguments.
fn exit_when_idle(job: &ScaledJob) -> anyhow::Result<Duration> {
    let mut args = job.args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--exit-when-idle") {
            Some("") => args.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => continue,
        };
        let value = value.context("--exit-when-idle without a value")?;
        return humantime::parse_duration(value)
            .with_context(|| format!("{}: --exit-when-idle {value:?}", job.name));
    }
    anyhow::bail!(
        "ScaledJob {}: its worker has no --exit-when-idle, so its Jobs would never end",
        job.name
    )
}

fn report(
    options: &ElasticOptions,
    object: &ScaledObject,
    ticks: Vec<Tick>,
    events: Vec<ScaleEvent>,
    (pods, job_pods): (Vec<PodLife>, Vec<PodLife>),
    load: LoadReport,
) -> ElasticReport {
    let k = options.time_scale;
    let end_s = ticks.last().map_or(0.0, |t| t.t_s);
    let replica_seconds = pods
        .iter()
        .chain(&job_pods)
        .map(|p| (p.exited_s.unwrap_or(end_s) - p.requested_s).max(0.0) * k)
        .sum();
    let peak_replicas = events.iter().map(|e| e.replicas).max().unwrap_or(0);
    let wakes = wakes(&events, &ticks, &pods, &load.answers, k);
    ElasticReport {
        scaled_object: object.name.clone(),
        polling_s: object.polling_s,
        cooldown_s: object.cooldown_s,
        values: object.triggers.iter().map(|t| t.value).collect(),
        pod_start_s: options.pod_start.as_secs_f64(),
        time_scale: k,
        lost: load.lost,
        duplicates: load.duplicates,
        first_answer_from_zero_s: wakes.first().map(|z| z.total_s),
        from_zero: wakes.first().cloned(),
        from_zero_p50: percentile(&wakes, 0.5),
        from_zero_p99: percentile(&wakes, 0.99),
        wakes,
        replica_seconds,
        always_on_replica_seconds: f64::from(peak_replicas) * end_s * k,
        peak_replicas,
        killed: pods.iter().chain(&job_pods).filter(|p| p.killed).count(),
        events,
        ticks,
        pods,
        job_pods,
        arrivals: options.arrivals.clone(),
        load,
    }
}

/// Every wake from zero replicas: the first request sent while the fleet was at zero (or before
/// the first wake), KEDA's 0 → 1 for it, the first pod asked for then, and its answer.
fn wakes(
    events: &[ScaleEvent],
    ticks: &[Tick],
    pods: &[PodLife],
    answers: &[(f64, f64)],
    k: f64,
) -> Vec<FromZero> {
    let mut at_zero_since = 0.0;
    let mut wakes = Vec::new();
    for event in events.iter().filter(|e| e.by == "keda") {
        if event.replicas == 0 {
            at_zero_since = event.t_s;
            continue;
        }
        let decided = event.t_s;
        let Some(&(sent, answered)) = answers
            .iter()
            .find(|(sent, _)| *sent >= at_zero_since - 1e-6)
            .filter(|(sent, _)| *sent <= decided + 1e-6)
        else {
            continue; // woken by what was queued before (nothing sent at zero)
        };
        let seen = ticks
            .iter()
            .find(|t| {
                t.t_s >= sent
                    && (t.messages.iter().any(|&m| m > 0)
                        || t.publish_rates.iter().any(|&r| r > 0.0))
            })
            .map_or(decided, |t| t.t_s.min(decided));
        let Some(pod) = pods.iter().find(|p| p.requested_s >= decided - 1e-6) else {
            continue;
        };
        let (Some(spawned), Some(ready)) = (pod.spawned_s, pod.ready_s) else {
            continue;
        };
        let mut wake = FromZero {
            sent_s: sent,
            statistics_s: seen - sent,
            controller_s: (decided - seen).max(0.0) * k,
            pod_start_s: (spawned - decided) * k,
            ember_start_s: ready - spawned,
            answer_s: (answered - ready).max(0.0),
            total_s: 0.0,
        };
        wake.total_s = wake.statistics_s
            + wake.controller_s
            + wake.pod_start_s
            + wake.ember_start_s
            + wake.answer_s;
        wakes.push(wake);
    }
    wakes
}

/// Each phase's `q` quantile over `wakes` (nearest rank), phase by phase; `None` without wakes.
fn percentile(wakes: &[FromZero], q: f64) -> Option<FromZero> {
    let of = |phase: fn(&FromZero) -> f64| {
        let mut values: Vec<f64> = wakes.iter().map(phase).collect();
        values.sort_by(f64::total_cmp);
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    (!wakes.is_empty()).then(|| FromZero {
        sent_s: f64::NAN,
        statistics_s: of(|w| w.statistics_s),
        controller_s: of(|w| w.controller_s),
        pod_start_s: of(|w| w.pod_start_s),
        ember_start_s: of(|w| w.ember_start_s),
        answer_s: of(|w| w.answer_s),
        total_s: of(|w| w.total_s),
    })
}

/// A Markdown summary of `report`.
pub fn markdown(report: &ElasticReport) -> String {
    let mut out = format!(
        "## elastic: {} (Kubernetes clocks × {})\n\n",
        report.scaled_object, report.time_scale
    );
    let seconds = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} s"));
    out += &format!(
        "| sent | answered | lost | duplicates | peak replicas | killed | replica-s | always-on replica-s |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} ({:.0} % saved) |\n\n",
        report.load.sent,
        report.load.answered,
        report.lost,
        report.duplicates,
        report.peak_replicas,
        report.killed,
        report.replica_seconds,
        report.always_on_replica_seconds,
        100.0 * (1.0 - report.replica_seconds / report.always_on_replica_seconds.max(1e-9)),
    );
    out += &format!(
        "First request at zero replicas answered after {}",
        seconds(report.first_answer_from_zero_s)
    );
    if let Some(z) = &report.from_zero {
        out += &format!(
            ": queue metric {:.1} s, KEDA polling {:.1} s, pod start {:.1} s, Ember start \
             {:.1} s, answer {:.2} s",
            z.statistics_s, z.controller_s, z.pod_start_s, z.ember_start_s, z.answer_s
        );
    }
    if let (Some(p50), Some(p99)) = (&report.from_zero_p50, &report.from_zero_p99) {
        out += &format!(
            ".\n\nOver {} wakes from zero, p50 / p99 (s): total {:.1} / {:.1}, queue metric {:.1} / \
             {:.1}, KEDA polling {:.1} / {:.1}, pod start {:.1} / {:.1}, Ember start {:.1} / {:.1}, \
             answer {:.2} / {:.2}",
            report.wakes.len(),
            p50.total_s,
            p99.total_s,
            p50.statistics_s,
            p99.statistics_s,
            p50.controller_s,
            p99.controller_s,
            p50.pod_start_s,
            p99.pod_start_s,
            p50.ember_start_s,
            p99.ember_start_s,
            p50.answer_s,
            p99.answer_s
        );
    }
    out += "\n\n| t (s) | replicas | by |\n|---|---|---|\n";
    for e in &report.events {
        out += &format!("| {:.1} | {} | {} |\n", e.t_s, e.replicas, e.by);
    }
    out += &format!(
        "\nLatency over the run: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms.\n",
        report.load.overall.p50_ms, report.load.overall.p99_ms, report.load.overall.max_ms
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wake_from_zero_is_split_into_its_phases() {
        let event = |t_s, replicas| ScaleEvent {
            t_s,
            replicas,
            by: "keda",
        };
        // Woken at 2 s and, after scaling to zero at 50 s, at 71 s.
        let events = [event(2.0, 1), event(50.0, 0), event(71.0, 1)];
        let tick = |t_s, messages| Tick {
            t_s,
            messages: vec![messages],
            publish_rates: vec![0.0],
            answer_rates: vec![0.0],
            replicas: 0,
            ready: 0,
        };
        let ticks = [tick(1.0, 0), tick(1.5, 1), tick(70.0, 0), tick(71.0, 3)];
        let pod = |requested_s, spawned_s, ready_s| PodLife {
            requested_s,
            spawned_s: Some(spawned_s),
            ready_s: Some(ready_s),
            ..PodLife::default()
        };
        let pods = [pod(2.0, 5.0, 5.5), pod(71.0, 74.0, 74.2)];
        // Sent, answered: three while up, then the first at zero at 69 s.
        let answers = [
            (1.2, 5.6),
            (10.0, 10.1),
            (20.0, 20.1),
            (69.0, 74.5),
            (70.0, 74.6),
        ];
        let wakes = wakes(&events, &ticks, &pods, &answers, 10.0);
        assert_eq!(wakes.len(), 2);
        let first = &wakes[0];
        assert_eq!(first.sent_s, 1.2);
        assert!((first.statistics_s - 0.3).abs() < 1e-9, "{first:?}");
        assert!(
            (first.controller_s - 5.0).abs() < 1e-9,
            "cluster time: {first:?}"
        );
        assert!((first.pod_start_s - 30.0).abs() < 1e-9);
        assert!((first.ember_start_s - 0.5).abs() < 1e-9);
        assert!((first.answer_s - 0.1).abs() < 1e-9);
        let second = &wakes[1];
        assert_eq!(second.sent_s, 69.0);
        assert!((second.statistics_s - 2.0).abs() < 1e-9, "{second:?}");
        assert!((second.total_s - (2.0 + 0.0 + 30.0 + 0.2 + 0.3)).abs() < 1e-9);
        let p99 = percentile(&wakes, 0.99).unwrap();
        assert_eq!((p99.statistics_s, p99.ember_start_s), (2.0, 0.5));
        let p50 = percentile(&wakes, 0.5).unwrap();
        assert!((p50.statistics_s - 0.3).abs() < 1e-9);
        assert!(percentile(&[], 0.5).is_none());
    }
}
