//! KEDA and the Kubernetes HPA, emulated as they document (and implement) their control loops,
//! from the real `keda/rabbitmq/*.yaml`:
//!
//! - the `rabbitmq` scaler over the management HTTP API: `QueueLength` is the queue's `messages`
//!   (ready + unacknowledged), `MessageRate` its publish rate; a trigger is active above its
//!   `activationValue` (`MessageRate` also while messages wait);
//! - a ScaledObject: every `pollingInterval` KEDA scales 0 → 1 when a trigger is active, and
//!   N → 0 once none has been for `cooldownPeriod`; between 1 and `maxReplicaCount` the HPA
//!   decides every 15 s: per trigger `ceil(metric / value)` (an `AverageValue` target), the
//!   largest, nothing within the 10 % tolerance, then the `behavior` stabilisation windows and
//!   rate policies (Kubernetes' defaults where the YAML is silent);
//! - a ScaledJob: every `pollingInterval`, `ceil(queue / value)` Jobs capped at
//!   `maxReplicaCount`, less the running ones as its `scalingStrategy` says.
//!
//! Time is seconds since the run began, so tests drive the controllers without a clock.

use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// How often the HPA controller syncs (kube-controller-manager's
/// `--horizontal-pod-autoscaler-sync-period` default).
pub const HPA_SYNC_S: f64 = 15.0;

/// The HPA's tolerance: no change while `metric / target` is within 10 % of the replica count.
const TOLERANCE: f64 = 0.1;

/// What a trigger measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Messages in the queue: ready and unacknowledged (RabbitMQ), active (Service Bus:
    /// not yet completed, locked ones included).
    QueueLength,
    /// Messages published per second.
    MessageRate,
    /// Requests the Deployment's replicas answered per second over a window (seconds):
    /// `sum(rate(ember_requests_total[window]))`.
    AnswerRate {
        /// The query's range, cluster seconds.
        window_s: f64,
    },
}

/// Which KEDA scaler a trigger is, so where its metric is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaler {
    /// `rabbitmq` over RabbitMQ's management API.
    RabbitMq,
    /// `azure-servicebus`: a queue's runtime properties.
    ServiceBus,
    /// `prometheus`: the workers' own metrics (answers per second).
    Prometheus,
}

/// One trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The trigger's name (else its queue's).
    pub name: String,
    /// Its scaler.
    pub scaler: Scaler,
    /// Queue it watches (empty for a `prometheus` trigger).
    pub queue: String,
    /// What it measures.
    pub mode: Mode,
    /// Target per replica (or per Job).
    pub value: f64,
    /// Active above this.
    pub activation: f64,
}

/// A queue's state as its broker reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Ready + unacknowledged messages (RabbitMQ's `messages`), or Service Bus's
    /// `ActiveMessageCount`.
    pub messages: u64,
    /// Publishes per second (RabbitMQ's `message_stats.publish_details.rate`; 0 on Service Bus).
    pub publish_rate: f64,
    /// Answers per second (a `prometheus` trigger's query).
    pub answer_rate: f64,
}

impl Trigger {
    /// The trigger's metric for `stats`.
    pub fn metric(&self, stats: QueueStats) -> f64 {
        match self.mode {
            Mode::QueueLength => stats.messages as f64,
            Mode::MessageRate => stats.publish_rate,
            Mode::AnswerRate { .. } => stats.answer_rate,
        }
    }

    /// Whether it is active (KEDA's `GetMetricsAndActivity`).
    pub fn active(&self, stats: QueueStats) -> bool {
        match self.mode {
            Mode::QueueLength => stats.messages as f64 > self.activation,
            Mode::MessageRate => {
                stats.publish_rate > self.activation || stats.messages as f64 > self.activation
            }
            Mode::AnswerRate { .. } => stats.answer_rate > self.activation,
        }
    }
}

/// A rate policy of an HPA scaling rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// At most this many pods per period.
    Pods { value: u32, period_s: f64 },
    /// At most this percentage of the period's starting count per period.
    Percent { value: u32, period_s: f64 },
}

impl Policy {
    fn period_s(self) -> f64 {
        match self {
            Policy::Pods { period_s, .. } | Policy::Percent { period_s, .. } => period_s,
        }
    }
}

/// Which policy wins when several allow different changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The one allowing the largest change.
    Max,
    /// The one allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One direction's HPA behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Stabilisation window, seconds.
    pub window_s: f64,
    /// Rate policies.
    pub policies: Vec<Policy>,
    /// How policies combine.
    pub select: Select,
}

impl Rules {
    /// Kubernetes' default scale-up: no window; double, or add 4 pods, every 15 s, whichever
    /// is more.
    fn default_up() -> Self {
        Self {
            window_s: 0.0,
            policies: vec![
                Policy::Percent {
                    value: 100,
                    period_s: 15.0,
                },
                Policy::Pods {
                    value: 4,
                    period_s: 15.0,
                },
            ],
            select: Select::Max,
        }
    }

    /// Kubernetes' default scale-down: a 300 s window, then down to the recommendation at once.
    fn default_down() -> Self {
        Self {
            window_s: 300.0,
            policies: vec![Policy::Percent {
                value: 100,
                period_s: 15.0,
            }],
            select: Select::Max,
        }
    }
}

/// A ScaledObject's scaling, as read from its YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledObject {
    /// `metadata.name`.
    pub name: String,
    /// `pollingInterval`, seconds.
    pub polling_s: f64,
    /// `cooldownPeriod`, seconds.
    pub cooldown_s: f64,
    /// `minReplicaCount`.
    pub min: u32,
    /// `maxReplicaCount`.
    pub max: u32,
    /// Its triggers.
    pub triggers: Vec<Trigger>,
    /// HPA scale-up behaviour.
    pub up: Rules,
    /// HPA scale-down behaviour.
    pub down: Rules,
}

/// How a ScaledJob counts Jobs already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStrategy {
    /// `maxScale - running`.
    Default,
    /// `maxScale - pending`, or up to `maxReplicaCount - running` when that would exceed it.
    Accurate,
    /// Fill up to `maxReplicaCount` at once.
    Eager,
}

/// A ScaledJob's scaling, as read from its YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledJob {
    /// `metadata.name`.
    pub name: String,
    /// `pollingInterval`, seconds.
    pub polling_s: f64,
    /// `maxReplicaCount`.
    pub max: u32,
    /// `scalingStrategy.strategy`.
    pub strategy: JobStrategy,
    /// Its triggers.
    pub triggers: Vec<Trigger>,
    /// The Job pod's `terminationGracePeriodSeconds` (Kubernetes' default 30).
    pub grace_s: f64,
    /// `args` of the Job's first container.
    pub args: Vec<String>,
}

/// What `keda/<dir>` scales: its ScaledObjects and ScaledJobs.
#[derive(Debug, Clone, Default)]
pub struct Scalers {
    /// ScaledObjects, by file order.
    pub objects: Vec<ScaledObject>,
    /// ScaledJobs, by file order.
    pub jobs: Vec<ScaledJob>,
}

/// Reads every `*.yaml` of `dir` and keeps the ScaledObjects and ScaledJobs.
pub fn read_dir(dir: &Path) -> anyhow::Result<Scalers> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut scalers = Scalers::default();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        parse(&text, &mut scalers).with_context(|| format!("reading {}", path.display()))?;
    }
    anyhow::ensure!(
        !scalers.objects.is_empty() || !scalers.jobs.is_empty(),
        "{} holds no ScaledObject or ScaledJob",
        dir.display()
    );
    Ok(scalers)
}

/// Adds the ScaledObjects and ScaledJobs of one YAML stream (other kinds are skipped).
pub fn parse(yaml: &str, into: &mut Scalers) -> anyhow::Result<()> {
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let resource = Resource::deserialize(document)?;
        match resource.kind.as_str() {
            "ScaledObject" => into.objects.push(resource.scaled_object()?),
            "ScaledJob" => into.jobs.push(resource.scaled_job()?),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Resource {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    polling_interval: Option<f64>,
    cooldown_period: Option<f64>,
    min_replica_count: Option<u32>,
    max_replica_count: Option<u32>,
    #[serde(default)]
    advanced: Advanced,
    #[serde(default)]
    triggers: Vec<TriggerSpec>,
    #[serde(default)]
    scaling_strategy: StrategySpec,
    #[serde(default)]
    job_target_ref: serde_yaml::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Advanced {
    #[serde(default)]
    horizontal_pod_autoscaler_config: HpaConfig,
}

#[derive(Debug, Default, Deserialize)]
struct HpaConfig {
    #[serde(default)]
    behavior: Behavior,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Behavior {
    scale_up: Option<RulesSpec>,
    scale_down: Option<RulesSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RulesSpec {
    stabilization_window_seconds: Option<f64>,
    select_policy: Option<String>,
    policies: Option<Vec<PolicySpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    #[serde(rename = "type")]
    kind: String,
    value: u32,
    period_seconds: f64,
}

#[derive(Debug, Deserialize)]
struct TriggerSpec {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct StrategySpec {
    strategy: Option<String>,
}

impl RulesSpec {
    /// These rules over `defaults`, field by field (as the HPA fills in a partial behaviour).
    fn over(spec: Option<&RulesSpec>, defaults: Rules) -> anyhow::Result<Rules> {
        let Some(spec) = spec else {
            return Ok(defaults);
        };
        let select = match spec.select_policy.as_deref() {
            None | Some("Max") => Select::Max,
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            Some(other) => anyhow::bail!("selectPolicy {other:?} is not Max, Min or Disabled"),
        };
        let policies = match &spec.policies {
            None => defaults.policies,
            Some(policies) => policies
                .iter()
                .map(|p| {
                    anyhow::ensure!(
                        p.period_seconds > 0.0,
                        "a policy's periodSeconds must be > 0"
                    );
                    Ok(match p.kind.as_str() {
                        "Pods" => Policy::Pods {
                            value: p.value,
                            period_s: p.period_seconds,
                        },
                        "Percent" => Policy::Percent {
                            value: p.value,
                            period_s: p.period_seconds,
                        },
                        other => anyhow::bail!("policy type {other:?} is not Pods or Percent"),
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Rules {
            window_s: spec
                .stabilization_window_seconds
                .unwrap_or(defaults.window_s),
            policies,
            select,
        })
    }
}

impl TriggerSpec {
    /// The trigger as emulated: `rabbitmq` over the management API, or `azure-servicebus` on a
    /// queue.
    fn trigger(&self) -> anyhow::Result<Trigger> {
        let kind = self.kind.as_str();
        let field = |name: &str| self.metadata.get(name).map(String::as_str);
        let number = |name: &str, default: Option<f64>| -> anyhow::Result<f64> {
            match field(name) {
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .with_context(|| format!("{kind} trigger: {name} {v:?} is not a number ≥ 0")),
                None => default.with_context(|| format!("{kind} trigger has no {name}")),
            }
        };
        let (scaler, mode, value, activation) = match kind {
            "rabbitmq" => {
                anyhow::ensure!(
                    field("protocol") == Some("http"),
                    "rabbitmq trigger: only protocol http (the management API) is emulated"
                );
                let mode = match field("mode") {
                    Some("QueueLength") => Mode::QueueLength,
                    Some("MessageRate") => Mode::MessageRate,
                    other => {
                        anyhow::bail!("rabbitmq trigger mode {other:?}: QueueLength or MessageRate")
                    }
                };
                let (value, activation) = ("value", "activationValue");
                let value = number(value, None)?;
                (
                    Scaler::RabbitMq,
                    mode,
                    value,
                    number(activation, Some(0.0))?,
                )
            }
            // KEDA's defaults: messageCount 5, activationMessageCount 0.
            "azure-servicebus" => {
                anyhow::ensure!(
                    field("topicName").is_none() && field("useRegex").is_none_or(|r| r == "false"),
                    "azure-servicebus trigger: only one queue (queueName) is emulated"
                );
                let value = number("messageCount", Some(5.0))?;
                let activation = number("activationMessageCount", Some(0.0))?;
                (Scaler::ServiceBus, Mode::QueueLength, value, activation)
            }
            // Only the answer rate of Ember's workers, as manifests/monitoring scrapes them.
            "prometheus" => {
                let query = field("query").context("prometheus trigger has no query")?;
                let window = query
                    .strip_prefix("sum(rate(ember_requests_total")
                    .and_then(|rest| rest.split_once('[')?.1.split_once(']'))
                    .map(|(window, _)| window)
                    .with_context(|| {
                        format!(
                            "prometheus trigger query {query:?}: only \
                             sum(rate(ember_requests_total{{...}}[<window>])) is emulated"
                        )
                    })?;
                let window_s = humantime::parse_duration(window)
                    .with_context(|| format!("prometheus trigger: range {window:?}"))?
                    .as_secs_f64();
                let value = number("threshold", None)?;
                let activation = number("activationThreshold", Some(0.0))?;
                (
                    Scaler::Prometheus,
                    Mode::AnswerRate { window_s },
                    value,
                    activation,
                )
            }
            other => anyhow::bail!(
                "trigger type {other:?}: only rabbitmq, azure-servicebus and prometheus are emulated"
            ),
        };
        anyhow::ensure!(value > 0.0, "{kind} trigger: its target must be > 0");
        let queue = match scaler {
            Scaler::Prometheus => String::new(),
            _ => field("queueName")
                .with_context(|| format!("{kind} trigger has no queueName"))?
                .to_owned(),
        };
        Ok(Trigger {
            name: self.name.clone().unwrap_or_else(|| match scaler {
                Scaler::Prometheus => "prometheus".to_owned(),
                _ => queue.clone(),
            }),
            scaler,
            queue,
            mode,
            value,
            activation,
        })
    }
}

impl Resource {
    fn triggers(&self) -> anyhow::Result<Vec<Trigger>> {
        let triggers: Vec<Trigger> = self
            .spec
            .triggers
            .iter()
            .map(TriggerSpec::trigger)
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(
            !triggers.is_empty(),
            "{} has no triggers",
            self.metadata.name
        );
        let mut brokers = triggers
            .iter()
            .map(|t| t.scaler)
            .filter(|s| *s != Scaler::Prometheus);
        let first = brokers.next();
        anyhow::ensure!(
            first.is_some() && brokers.all(|s| Some(s) == first),
            "{}: needs the triggers of one broker (and any prometheus ones)",
            self.metadata.name
        );
        Ok(triggers)
    }

    fn scaled_object(&self) -> anyhow::Result<ScaledObject> {
        let spec = &self.spec;
        let behavior = &spec.advanced.horizontal_pod_autoscaler_config.behavior;
        let object = ScaledObject {
            name: self.metadata.name.clone(),
            polling_s: spec.polling_interval.unwrap_or(30.0),
            cooldown_s: spec.cooldown_period.unwrap_or(300.0),
            min: spec.min_replica_count.unwrap_or(0),
            max: spec.max_replica_count.unwrap_or(100),
            triggers: self.triggers()?,
            up: RulesSpec::over(behavior.scale_up.as_ref(), Rules::default_up())?,
            down: RulesSpec::over(behavior.scale_down.as_ref(), Rules::default_down())?,
        };
        anyhow::ensure!(
            object.min <= object.max && object.max >= 1 && object.polling_s > 0.0,
            "{}: needs minReplicaCount ≤ maxReplicaCount, maxReplicaCount ≥ 1 and pollingInterval > 0",
            object.name
        );
        Ok(object)
    }

    fn scaled_job(&self) -> anyhow::Result<ScaledJob> {
        let spec = &self.spec;
        let strategy = match spec.scaling_strategy.strategy.as_deref() {
            None | Some("default") => JobStrategy::Default,
            Some("accurate") => JobStrategy::Accurate,
            Some("eager") => JobStrategy::Eager,
            Some(other) => anyhow::bail!("scalingStrategy {other:?}: default, accurate or eager"),
        };
        let pod = &spec.job_target_ref["template"]["spec"];
        let args = pod["containers"][0]["args"]
            .as_sequence()
            .map(|args| {
                args.iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ScaledJob {
            name: self.metadata.name.clone(),
            polling_s: spec.polling_interval.unwrap_or(30.0),
            max: spec.max_replica_count.unwrap_or(100),
            strategy,
            triggers: self.triggers()?,
            grace_s: pod["terminationGracePeriodSeconds"]
                .as_f64()
                .unwrap_or(30.0),
            args,
        })
    }
}

/// The `terminationGracePeriodSeconds` of the Deployment in a manifest file (Kubernetes'
/// default 30 where it says none).
pub fn grace_period_s(deployment_yaml: &str) -> anyhow::Result<f64> {
    for document in serde_yaml::Deserializer::from_str(deployment_yaml) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value["kind"].as_str() == Some("Deployment") {
            return Ok(
                value["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                    .as_f64()
                    .unwrap_or(30.0),
            );
        }
    }
    anyhow::bail!("no Deployment in the manifest")
}

/// Why the replica count changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    /// KEDA: 0 → 1 on activation, or N → 0 after the cooldown.
    Keda,
    /// The HPA, between 1 and the maximum.
    Hpa,
}

/// A ScaledObject's control loop: KEDA's activation and the HPA above it.
#[derive(Debug, Clone)]
pub struct ObjectController {
    spec: ScaledObject,
    replicas: u32,
    last_active_s: Option<f64>,
    next_poll_s: f64,
    next_sync_s: f64,
    /// The HPA's past recommendations (time, desired), for the stabilisation windows.
    recommendations: Vec<(f64, u32)>,
    /// Past scale events (time, change), for the rate policies.
    events: Vec<(f64, i64)>,
}

impl ObjectController {
    /// A controller at `replicas` (the scale target's count when the run starts).
    pub fn new(spec: ScaledObject, replicas: u32) -> Self {
        Self {
            spec,
            replicas,
            last_active_s: None,
            next_poll_s: 0.0,
            next_sync_s: 0.0,
            recommendations: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The replica count it has decided.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// When it next needs the queues' state.
    pub fn next_tick_s(&self) -> f64 {
        self.next_poll_s.min(self.next_sync_s)
    }

    /// Runs whatever loop is due at `now_s` on the queues' state (`stats[i]` for trigger `i`);
    /// returns the new count and who decided it when it changes.
    pub fn tick(&mut self, now_s: f64, stats: &[QueueStats]) -> Option<(u32, Decider)> {
        let before = self.replicas;
        let mut decider = None;
        if now_s >= self.next_poll_s {
            self.next_poll_s = now_s + self.spec.polling_s;
            if self.keda_poll(now_s, stats) {
                decider = Some(Decider::Keda);
            }
        }
        if now_s >= self.next_sync_s {
            self.next_sync_s = now_s + HPA_SYNC_S;
            if self.hpa_sync(now_s, stats) {
                decider = Some(Decider::Hpa);
            }
        }
        decider
            .filter(|_| self.replicas != before)
            .map(|d| (self.replicas, d))
    }

    /// KEDA's poll: scale from zero when active, to zero after the cooldown; true if it did.
    fn keda_poll(&mut self, now_s: f64, stats: &[QueueStats]) -> bool {
        let active = self
            .spec
            .triggers
            .iter()
            .zip(stats)
            .any(|(t, &s)| t.active(s));
        if active {
            self.last_active_s = Some(now_s);
            if self.replicas == 0 {
                self.set(now_s, self.spec.min.max(1));
                return true;
            }
        } else if self.replicas > 0
            && self.spec.min == 0
            && self
                .last_active_s
                .is_none_or(|t| t + self.spec.cooldown_s < now_s)
        {
            self.set(now_s, 0);
            self.recommendations.clear();
            return true;
        }
        false
    }

    /// One HPA sync (skipped at zero replicas: KEDA owns 0 ↔ 1); true if it changed the count.
    fn hpa_sync(&mut self, now_s: f64, stats: &[QueueStats]) -> bool {
        let current = self.replicas;
        if current == 0 {
            return false;
        }
        // Per trigger, an AverageValue target: ceil(metric / value), unless within tolerance.
        let proposal = self
            .spec
            .triggers
            .iter()
            .zip(stats)
            .map(|(t, &s)| {
                let metric = t.metric(s);
                let ratio = metric / (t.value * f64::from(current));
                if (ratio - 1.0).abs() <= TOLERANCE {
                    current
                } else {
                    (metric / t.value).ceil() as u32
                }
            })
            .max()
            .unwrap_or(current);
        let (min, max) = (self.spec.min.max(1), self.spec.max);
        let desired = self.stabilise(now_s, proposal);
        let desired = self.limit_rate(now_s, desired).clamp(min, max);
        if desired == current {
            return false;
        }
        self.set(now_s, desired);
        true
    }

    /// The stabilisation windows: up to the least recommendation of the scale-up window, down
    /// to the greatest of the scale-down window (this one included).
    fn stabilise(&mut self, now_s: f64, proposal: u32) -> u32 {
        let (up_cutoff, down_cutoff) = (
            now_s - self.spec.up.window_s,
            now_s - self.spec.down.window_s,
        );
        let (mut up, mut down) = (proposal, proposal);
        for &(t, r) in &self.recommendations {
            if t > up_cutoff {
                up = up.min(r);
            }
            if t > down_cutoff {
                down = down.max(r);
            }
        }
        let keep = up_cutoff.min(down_cutoff);
        self.recommendations.retain(|&(t, _)| t > keep);
        self.recommendations.push((now_s, proposal));
        self.replicas.max(up).min(down)
    }

    /// The rate policies: how far the count may move from where each policy's period began.
    fn limit_rate(&self, now_s: f64, desired: u32) -> u32 {
        let current = i64::from(self.replicas);
        let desired = i64::from(desired);
        let changed_since = |period_s: f64, up: bool| -> i64 {
            self.events
                .iter()
                .filter(|&&(t, change)| t > now_s - period_s && (change > 0) == up)
                .map(|&(_, change)| change.abs())
                .sum()
        };
        let limited = if desired > current {
            let rules = &self.spec.up;
            let limits = rules.policies.iter().map(|&p| {
                let start = current - changed_since(p.period_s(), true);
                match p {
                    Policy::Pods { value, .. } => start + i64::from(value),
                    Policy::Percent { value, .. } => {
                        (start as f64 * (1.0 + f64::from(value) / 100.0)).ceil() as i64
                    }
                }
            });
            let limit = match rules.select {
                Select::Max => limits.max(),
                Select::Min => limits.min(),
                Select::Disabled => Some(current),
            };
            desired.min(limit.unwrap_or(current).max(current))
        } else if desired < current {
            let rules = &self.spec.down;
            let limits = rules.policies.iter().map(|&p| {
                let start = current + changed_since(p.period_s(), false);
                match p {
                    Policy::Pods { value, .. } => start - i64::from(value),
                    Policy::Percent { value, .. } => {
                        (start as f64 * (1.0 - f64::from(value) / 100.0)) as i64
                    }
                }
            });
            // Max allows the largest change: the lowest floor.
            let limit = match rules.select {
                Select::Max => limits.min(),
                Select::Min => limits.max(),
                Select::Disabled => Some(current),
            };
            desired.max(limit.unwrap_or(current).min(current))
        } else {
            desired
        };
        limited.max(0) as u32
    }

    fn set(&mut self, now_s: f64, replicas: u32) {
        let change = i64::from(replicas) - i64::from(self.replicas);
        if change != 0 {
            self.events.push((now_s, change));
            // Policies look back at most this far.
            let longest = self
                .spec
                .up
                .policies
                .iter()
                .chain(&self.spec.down.policies)
                .map(|p| p.period_s())
                .fold(0.0, f64::max);
            self.events.retain(|&(t, _)| t > now_s - longest);
        }
        self.replicas = replicas;
    }
}

impl ScaledJob {
    /// Jobs to create now, with `running` Jobs running (`pending` of them not started yet), for
    /// the queues' state (`stats[i]` for trigger `i`).
    pub fn jobs_to_create(&self, stats: &[QueueStats], running: u32, pending: u32) -> u32 {
        let active = self.triggers.iter().zip(stats).any(|(t, &s)| t.active(s));
        if !active {
            return 0;
        }
        let max = i64::from(self.max);
        let max_scale = self
            .triggers
            .iter()
            .zip(stats)
            .map(|(t, &s)| (t.metric(s) / t.value).ceil() as i64)
            .max()
            .unwrap_or(0)
            .min(max);
        let (running, pending) = (i64::from(running), i64::from(pending));
        let create = match self.strategy {
            JobStrategy::Default => max_scale - running,
            JobStrategy::Accurate if max_scale + running - pending > max => max - running,
            JobStrategy::Accurate => max_scale - pending,
            JobStrategy::Eager => (max - running - pending).min(max_scale),
        };
        create.clamp(0, max - running.min(max)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECT: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: worker
spec:
  scaleTargetRef:
    name: worker
  minReplicaCount: 0
  maxReplicaCount: 8
  pollingInterval: 5
  cooldownPeriod: 60
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 120
          policies:
            - type: Pods
              value: 1
              periodSeconds: 60
  triggers:
    - type: rabbitmq
      name: realtime
      metadata:
        protocol: http
        mode: QueueLength
        queueName: ember.m.realtime
        value: "100"
        activationValue: "0"
    - type: rabbitmq
      metadata:
        protocol: http
        mode: MessageRate
        queueName: ember.m.batch
        value: "1000"
        activationValue: "5"
"#;

    fn object() -> ScaledObject {
        let mut scalers = Scalers::default();
        parse(OBJECT, &mut scalers).unwrap();
        scalers.objects.remove(0)
    }

    fn queues(realtime: u64, batch_rate: f64) -> [QueueStats; 2] {
        [
            QueueStats {
                messages: realtime,
                ..QueueStats::default()
            },
            QueueStats {
                publish_rate: batch_rate,
                ..QueueStats::default()
            },
        ]
    }

    #[test]
    fn reads_the_spec_filling_in_kubernetes_defaults() {
        let spec = object();
        assert_eq!(
            (spec.polling_s, spec.cooldown_s, spec.min, spec.max),
            (5.0, 60.0, 0, 8)
        );
        assert_eq!(spec.triggers[0].name, "realtime");
        assert_eq!(spec.triggers[1].name, "ember.m.batch", "unnamed: its queue");
        assert_eq!(spec.triggers[1].mode, Mode::MessageRate);
        assert_eq!(spec.triggers[1].activation, 5.0);
        // Scale-up unspecified: Kubernetes' default; scale-down's window and policy given.
        assert_eq!(spec.up, Rules::default_up());
        assert_eq!(spec.down.window_s, 120.0);
        assert_eq!(
            spec.down.policies,
            [Policy::Pods {
                value: 1,
                period_s: 60.0
            }]
        );
        for (bad, why) in [
            ("mode: QueueLength", "mode: Lag", "mode Some(\"Lag\")"),
            ("protocol: http", "protocol: amqp", "protocol http"),
            ("value: \"100\"", "value: \"-1\"", "value \"-1\""),
        ]
        .map(|(from, to, why)| (OBJECT.replacen(from, to, 1), why))
        {
            let error = format!("{:#}", parse(&bad, &mut Scalers::default()).unwrap_err());
            assert!(error.contains(why), "{why}: {error}");
        }
    }

    #[test]
    fn the_shipped_scalers_and_grace_period_are_read() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let scalers = read_dir(&Path::new(root).join("keda/rabbitmq")).unwrap();
        let object = &scalers.objects[0];
        assert_eq!(object.name, "ember-worker-digits");
        let modes: Vec<Mode> = object.triggers.iter().map(|t| t.mode).collect();
        assert_eq!(
            modes,
            [
                Mode::QueueLength,
                Mode::QueueLength,
                Mode::MessageRate,
                Mode::MessageRate
            ]
        );
        let job = &scalers.jobs[0];
        assert_eq!(job.strategy, JobStrategy::Accurate);
        assert!(
            job.args.iter().any(|a| a.starts_with("--exit-when-idle")),
            "{:?}",
            job.args
        );
        let deployment =
            std::fs::read_to_string(Path::new(root).join("manifests/base/worker-digits.yaml"))
                .unwrap();
        assert_eq!(grace_period_s(&deployment).unwrap(), 90.0);

        let servicebus = read_dir(&Path::new(root).join("keda/servicebus")).unwrap();
        let object = &servicebus.objects[0];
        let read: Vec<_> = object
            .triggers
            .iter()
            .map(|t| (t.scaler, t.mode, t.queue.as_str(), t.value, t.activation))
            .collect();
        assert_eq!(
            read[..2],
            [
                (
                    Scaler::ServiceBus,
                    Mode::QueueLength,
                    "ember.digits.realtime",
                    100.0,
                    0.0
                ),
                (
                    Scaler::ServiceBus,
                    Mode::QueueLength,
                    "ember.digits.batch",
                    30000.0,
                    0.0
                ),
            ]
        );
        let answers = &object.triggers[2];
        assert_eq!(
            (answers.scaler, answers.mode, answers.value),
            (
                Scaler::Prometheus,
                Mode::AnswerRate { window_s: 120.0 },
                4000.0
            )
        );
        // Active while any answer is counted, whatever the queues say.
        let answering = QueueStats {
            answer_rate: 0.2,
            ..QueueStats::default()
        };
        assert!(answers.active(answering) && !answers.active(QueueStats::default()));
        assert_eq!(answers.metric(answering), 0.2);
    }

    #[test]
    fn only_the_answer_rate_query_is_emulated() {
        let trigger = |query: &str| TriggerSpec {
            kind: "prometheus".into(),
            name: None,
            metadata: [("query", query), ("threshold", "10")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        };
        let read = trigger("sum(rate(ember_requests_total{model=\"m\"}[30s]))").trigger();
        assert_eq!(read.unwrap().mode, Mode::AnswerRate { window_s: 30.0 });
        let error = trigger("sum(rate(http_requests_total[1m]))")
            .trigger()
            .unwrap_err();
        assert!(format!("{error:#}").contains("only sum(rate(ember_requests_total"));
    }

    #[test]
    fn keda_wakes_from_zero_on_activity_and_sleeps_after_the_cooldown() {
        let mut c = ObjectController::new(object(), 0);
        assert_eq!(c.tick(0.0, &queues(0, 0.0)), None);
        // A rate at the activation value is not activity; one message is.
        assert_eq!(c.tick(5.0, &queues(0, 5.0)), None);
        assert_eq!(c.tick(10.0, &queues(1, 0.0)), Some((1, Decider::Keda)));
        // Idle from 10 s: KEDA keeps the replica until 60 s have passed since it was last active.
        for t in [15.0, 30.0, 45.0, 60.0, 70.0] {
            assert_eq!(c.tick(t, &queues(0, 0.0)), None, "at {t}");
        }
        assert_eq!(c.tick(75.0, &queues(0, 0.0)), Some((0, Decider::Keda)));
    }

    #[test]
    fn the_hpa_follows_the_largest_trigger_within_its_rate_and_windows() {
        let mut c = ObjectController::new(object(), 1);
        // 450 waiting realtime requests at 100 per replica: 5 replicas, but doubling per 15 s
        // (or +4) lets 1 → 5 at once; the batch rate asks for 2 only.
        assert_eq!(c.tick(0.0, &queues(450, 2000.0)), Some((5, Decider::Hpa)));
        // Within 10 % of 5 × 100: no change.
        assert_eq!(c.tick(15.0, &queues(540, 0.0)), None);
        // Demand falls to 1 replica: the 120 s window holds 5 (its greatest recommendation)...
        assert_eq!(c.tick(30.0, &queues(50, 0.0)), None);
        assert_eq!(c.tick(120.0, &queues(50, 0.0)), None);
        // ...until the 5 leaves it at 135 s (recommended at 15 s), then one pod a minute.
        assert_eq!(c.tick(135.0, &queues(50, 0.0)), Some((4, Decider::Hpa)));
        assert_eq!(c.tick(150.0, &queues(50, 0.0)), None);
        assert_eq!(c.tick(180.0, &queues(50, 0.0)), None);
        // The event at 135 s falls out of the 60 s period at 195 s (periods are open at the start).
        assert_eq!(c.tick(195.0, &queues(50, 0.0)), Some((3, Decider::Hpa)));
        // A surge asking for 50: 3 × 2 = 6 or 3 + 4 = 7 allowed per 15 s, the more: 7; then 8,
        // the maximum.
        assert_eq!(c.tick(210.0, &queues(5000, 0.0)), Some((7, Decider::Hpa)));
        assert_eq!(c.tick(225.0, &queues(5000, 0.0)), Some((8, Decider::Hpa)));
    }

    #[test]
    fn scaled_jobs_count_running_jobs_as_their_strategy_says() {
        let mut job = ScaledJob {
            name: "batch".into(),
            polling_s: 15.0,
            max: 4,
            strategy: JobStrategy::Default,
            triggers: vec![Trigger {
                name: "batch".into(),
                scaler: Scaler::RabbitMq,
                queue: "q".into(),
                mode: Mode::QueueLength,
                value: 1000.0,
                activation: 500.0,
            }],
            grace_s: 30.0,
            args: Vec::new(),
        };
        let waiting = |messages| {
            [QueueStats {
                messages,
                ..QueueStats::default()
            }]
        };
        assert_eq!(job.jobs_to_create(&waiting(500), 0, 0), 0, "not active");
        assert_eq!(job.jobs_to_create(&waiting(2500), 0, 0), 3);
        assert_eq!(job.jobs_to_create(&waiting(2500), 1, 0), 2);
        assert_eq!(job.jobs_to_create(&waiting(9000), 1, 0), 3, "capped at 4");
        job.strategy = JobStrategy::Accurate;
        assert_eq!(
            job.jobs_to_create(&waiting(2500), 1, 0),
            3,
            "3 more: the queue excludes taken work"
        );
        assert_eq!(job.jobs_to_create(&waiting(2500), 2, 1), 2);
        assert_eq!(job.jobs_to_create(&waiting(9000), 3, 0), 1);
        job.strategy = JobStrategy::Eager;
        assert_eq!(job.jobs_to_create(&waiting(1500), 1, 0), 2);
    }
}
