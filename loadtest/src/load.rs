//! The load generator: requests go to Ember's queues over RabbitMQ exactly as any producer sends
//! them (the wire protocol of `docs/protocol.md`, raw lapin), answers come back on direct reply-to (realtime
//! lane) or the model's result queue (batch lane), matched by correlation id.
//!
//! Open loop (fixed or Poisson arrivals): each request has an intended send time, and latency
//! is measured from it, so a generator held up by a slow server still charges the wait to the
//! server (no coordinated omission). Closed loop: a fixed number in flight, for max throughput.

use crate::payloads::Payloads;
use crate::worker::Probe;
use anyhow::Context;
use ember::protocol::Lane;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use ember::transport::{ClientTransport, Message, Properties, Transport, headers, queues};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::PublisherConfirm;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// RabbitMQ's direct reply-to pseudo-queue.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Length of one timeline interval.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// When requests are sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// Evenly spaced, `rate` per second.
    Fixed { rate: f64 },
    /// Poisson process with mean `rate` per second (exponential gaps).
    Poisson { rate: f64 },
    /// `in_flight` requests outstanding at all times.
    Closed { in_flight: usize },
    /// At these offsets from the start, in seconds (ascending; one per request).
    Trace { at: Arc<Vec<f64>> },
}

/// One model under load and the request bodies to send it (cycled).
#[derive(Debug, Clone)]
pub struct Target {
    /// Model name.
    pub model: String,
    /// OIP V2 request bodies.
    pub payloads: Payloads,
}

/// What load to offer.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Models under load; requests are spread evenly across them.
    pub targets: Vec<Target>,
    /// Arrival process.
    pub arrival: Arrival,
    /// Requests to send.
    pub requests: usize,
    /// Share of requests on the realtime lane (RPC); the rest go to the batch lane.
    pub realtime_share: f64,
    /// Deadline given to each request, from its intended send time.
    pub deadline: Option<Duration>,
    /// Seed of arrivals and lane choice.
    pub seed: u64,
    /// After the last send, how long to wait for answers before counting the rest lost.
    pub drain: Duration,
    /// Shown before the progress bar.
    pub label: String,
    /// The worker whose memory and CPU the timeline samples, if known.
    pub worker_pid: Option<u32>,
}

/// One interval of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds from the start of the run to the end of the interval.
    pub t_s: f64,
    /// Answers per second in the interval.
    pub answered_rps: f64,
    /// Median latency of the interval's answers, ms (0 when none).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// The worker's resident memory at the end of the interval, bytes.
    pub worker_rss_bytes: Option<u64>,
    /// CPU cores the worker kept busy during the interval.
    pub worker_cpu_cores: Option<f64>,
    /// File descriptors the worker holds open (sockets included) at the end of the interval.
    pub worker_open_fds: Option<u64>,
}

/// Latency and outcomes of one model on one lane.
#[derive(Debug, Clone, Serialize)]
pub struct LaneReport {
    /// Model name.
    pub model: String,
    /// `realtime` or `batch`.
    pub lane: String,
    /// Answers (successful or not).
    pub answered: u64,
    /// Answers that were errors.
    pub errors: u64,
    /// Latency percentiles of all answers, from intended send to answer, in ms.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Requests published (and confirmed by the broker).
    pub sent: u64,
    /// Requests answered (each counted once).
    pub answered: u64,
    /// Sent but never answered within the drain time, by message id. Must be 0.
    pub lost: u64,
    /// Requests still waiting in the models' queues at the end (no worker took them: of those
    /// not answered, these were not lost but never taken).
    pub still_queued: u64,
    /// Answers received again for a request already answered.
    pub duplicates: u64,
    /// Publishes the broker refused.
    pub publish_failures: u64,
    /// Error answers by code.
    pub errors: BTreeMap<String, u64>,
    /// First intended send to last answer.
    pub duration_s: f64,
    /// Answers per second over `duration_s`.
    pub throughput_rps: f64,
    /// Offered rate (open loop), requests per second.
    pub offered_rps: Option<f64>,
    /// The first request's wait for its answer, from its intended send time.
    pub first_answer_s: Option<f64>,
    /// Every answered request's intended send and answer, seconds from the start, in the order
    /// they were sent (not in the JSON).
    #[serde(skip)]
    pub answers: Vec<(f64, f64)>,
    /// Per model and lane.
    pub lanes: Vec<LaneReport>,
    /// All answers together.
    pub overall: LaneReport,
    /// Rate and latency per interval (one second), in time order.
    pub timeline: Vec<Sample>,
}

struct Pending {
    intended: Instant,
    target: usize,
    lane: Lane,
}

/// What the sender, the confirm task, the collector and the sampler share.
#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// Intended send and answer of each answered request, by sequence number.
    answered: HashMap<u64, (Instant, Instant)>,
    histograms: HashMap<(usize, Lane), Histogram<u64>>,
    /// Latencies of the current timeline interval.
    interval: Option<Histogram<u64>>,
    timeline: Vec<Sample>,
    errors: HashMap<(usize, Lane), u64>,
    codes: BTreeMap<String, u64>,
    duplicates: u64,
    publish_failures: u64,
    last_answer: Option<Instant>,
}

struct Ledger {
    state: Mutex<State>,
    /// Closed loop: one permit per request that may be in flight, returned on each answer.
    slots: Option<Semaphore>,
    /// Woken when nothing is pending any more.
    idle: Notify,
}

impl Ledger {
    /// Frees the slot of a request that was answered or refused.
    fn release(&self) {
        if let Some(slots) = &self.slots {
            slots.add_permits(1);
        }
    }
}

/// A tiny seeded generator (xorshift64*), enough for arrivals, lane choice and payloads.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An answer, as the collector matches it.
struct Answer {
    /// When it arrived.
    at: Instant,
    correlation_id: Option<String>,
    error_code: Option<String>,
}

/// One run's bookkeeping: the ledger, its collector of answers and its timeline sampler.
struct Session {
    ledger: Arc<Ledger>,
    started: Instant,
    /// Message ids are `<run id>-<seq>`.
    run_id: String,
    rng: Rng,
    next_at: Instant,
    progress: ProgressBar,
    collector: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
    finish_sampling: oneshot::Sender<()>,
}

impl Session {
    /// Starts collecting `answers` and sampling; the run's clock starts now.
    fn start(
        spec: &LoadSpec,
        answers: impl futures::Stream<Item = Answer> + Send + Unpin + 'static,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!spec.targets.is_empty(), "no model to load");
        let run_id = format!(
            "lt{:x}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_nanos()
        );
        let slots = match spec.arrival {
            Arrival::Closed { in_flight } => Some(Semaphore::new(in_flight.max(1))),
            _ => None,
        };
        let ledger = Arc::new(Ledger {
            state: Mutex::default(),
            slots,
            idle: Notify::new(),
        });
        let started = Instant::now();
        let collector = tokio::spawn(collect(answers, ledger.clone(), format!("{run_id}-")));
        let progress = progress_bar(&spec.label, spec.requests);
        let (finish_sampling, sampling_done) = oneshot::channel();
        let sampler = tokio::spawn(sample(
            ledger.clone(),
            started,
            spec.worker_pid.map(Probe::new),
            progress.clone(),
            sampling_done,
        ));
        Ok(Self {
            ledger,
            started,
            run_id,
            rng: Rng::new(spec.seed),
            next_at: started,
            progress,
            collector,
            sampler,
            finish_sampling,
        })
    }

    /// Waits until request `seq` is due and records it pending: its message id, target and
    /// lane.
    async fn due(&mut self, spec: &LoadSpec, seq: u64) -> anyhow::Result<(String, usize, Lane)> {
        let intended = match spec.arrival {
            Arrival::Fixed { rate } => self.started + Duration::from_secs_f64(seq as f64 / rate),
            Arrival::Poisson { rate } => {
                self.next_at += Duration::from_secs_f64(-(1.0 - self.rng.unit()).ln() / rate);
                self.next_at
            }
            Arrival::Closed { .. } => {
                if let Some(slots) = &self.ledger.slots {
                    slots.acquire().await?.forget();
                }
                Instant::now()
            }
            Arrival::Trace { ref at } => self.started + Duration::from_secs_f64(at[seq as usize]),
        };
        if intended > Instant::now() {
            // (Never for a due request: a timer rounds up to the next millisecond tick.)
            tokio::time::sleep_until(intended.into()).await;
        }
        let target = seq as usize % spec.targets.len();
        let lane = if self.rng.unit() < spec.realtime_share {
            Lane::Realtime
        } else {
            Lane::Batch
        };
        let pending = Pending {
            intended,
            target,
            lane,
        };
        self.ledger
            .state
            .lock()
            .unwrap()
            .pending
            .insert(seq, pending);
        Ok((format!("{}-{seq}", self.run_id), target, lane))
    }

    /// Waits up to `spec.drain` for the stragglers and returns what the run recorded; what is
    /// still pending then is lost.
    async fn finish(self, spec: &LoadSpec) -> anyhow::Result<(State, Instant)> {
        let ledger = &self.ledger;
        let drained = async {
            loop {
                let idle = ledger.idle.notified();
                if ledger.state.lock().unwrap().pending.is_empty() {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(spec.drain, drained).await;
        self.collector.abort();
        let _ = self.finish_sampling.send(());
        self.sampler.await?;
        self.progress.finish_and_clear();
        let state = std::mem::take(&mut *ledger.state.lock().unwrap());
        Ok((state, self.started))
    }
}

impl Ledger {
    /// Counts request `seq` refused by the broker.
    fn refused(&self, seq: u64) {
        let mut state = self.state.lock().unwrap();
        state.publish_failures += 1;
        state.pending.remove(&seq);
        drop(state);
        self.release();
    }
}

/// Offers `spec`'s load to the workers serving its models through the RabbitMQ broker at `url`.
pub async fn run(url: &str, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    // The models' queues exist before the first request, whoever starts first.
    let topology = AmqpTransport::connect(AmqpConfig::new(url)).await?;
    for target in &spec.targets {
        topology.declare(&target.model).await?;
    }
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut answers = vec![
        channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?
            .boxed(),
    ];
    let results_channel = connection.create_channel().await?;
    results_channel
        .basic_qos(1000, BasicQosOptions::default())
        .await?;
    for target in &spec.targets {
        let consumer = results_channel
            .basic_consume(
                queues::results(&target.model).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        answers.push(consumer.boxed());
    }
    let answers = futures::stream::select_all(answers)
        .take_while(|delivery| std::future::ready(delivery.is_ok()))
        .filter_map(|delivery| async move {
            let delivery = delivery.ok()?;
            let at = Instant::now();
            if !delivery.routing_key.as_str().starts_with(DIRECT_REPLY_TO) {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            let properties = &delivery.properties;
            Some(Answer {
                at,
                correlation_id: properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| id.to_string()),
                error_code: error_code(properties),
            })
        })
        .boxed();
    let mut session = Session::start(spec, answers)?;
    // Confirms are awaited in order by their own task, so sending never waits on them.
    let (confirms, mut confirmed) = mpsc::unbounded_channel::<(u64, PublisherConfirm)>();
    let confirming = tokio::spawn({
        let ledger = session.ledger.clone();
        async move {
            while let Some((seq, confirm)) = confirmed.recv().await {
                if confirm.await.map_or(true, |c| c.is_nack()) {
                    ledger.refused(seq);
                }
            }
        }
    });
    for seq in 0..spec.requests as u64 {
        let (id, target, lane) = session.due(spec, seq).await?;
        let t = &spec.targets[target];
        let payload = &t.payloads[(seq as usize / spec.targets.len()) % t.payloads.len()];
        let id: ShortString = id.into();
        let mut properties = BasicProperties::default()
            .with_message_id(id.clone())
            .with_correlation_id(id)
            .with_delivery_mode(2);
        if lane == Lane::Realtime {
            properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
        }
        let mut headers = FieldTable::default();
        if let Some(ms) = deadline_ms(spec, &session, seq) {
            headers.insert(headers::DEADLINE.into(), AMQPValue::LongLongInt(ms as i64));
        }
        if let Some(length) = payload.header_length {
            let length = AMQPValue::LongLongInt(length as i64);
            headers.insert(headers::HEADER_LENGTH.into(), length);
        }
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queues::requests(&t.model, lane).as_str().into(),
                BasicPublishOptions::default(),
                &payload.body,
                properties,
            )
            .await?;
        let _ = confirms.send((seq, confirm));
    }
    drop(confirms);
    confirming.await?;
    let (state, started) = session.finish(spec).await?;
    let _ = connection.close(200, "done".into()).await;
    let mut still_queued = 0;
    for target in &spec.targets {
        for lane in [Lane::Realtime, Lane::Batch] {
            let queue = queues::requests(&target.model, lane);
            still_queued += u64::from(topology.depth(&queue).await.unwrap_or(0));
        }
    }
    topology.close().await;
    Ok(LoadReport {
        still_queued,
        ..report(state, spec, started)
    })
}

/// Most sends in flight at once over [`run_over`].
const SENDS_IN_FLIGHT: usize = 64;

/// Offers `spec`'s load through any of Ember's client transports (Service Bus): realtime
/// requests answered to a private inbox, batch ones to the models' result queues. Sends run
/// concurrently, so a broker with a round trip per send keeps to the schedule. JSON bodies only
/// where the transport carries no binary; `still_queued` is not measured (0).
pub async fn run_over(
    transport: Arc<dyn ClientTransport>,
    spec: &LoadSpec,
) -> anyhow::Result<LoadReport> {
    for target in &spec.targets {
        transport.declare(&target.model).await?;
    }
    let inbox = transport.inbox().await?;
    let results: Vec<String> = spec
        .targets
        .iter()
        .map(|t| queues::results(&t.model))
        .collect();
    let subscription = transport.subscribe(&results, 1000).await?;
    let results = futures::stream::unfold(subscription, |mut subscription| async move {
        let delivery = subscription.next().await?;
        let at = Instant::now();
        let _ = delivery.settle.ack().await;
        Some(((at, delivery.message), subscription))
    });
    let replies = inbox.replies.map(|message| (Instant::now(), message));
    let answers = futures::stream::select(replies, results)
        .map(|(at, message)| Answer {
            at,
            correlation_id: message.properties.correlation_id,
            error_code: message.properties.error_code.map(|c| c.as_str().to_owned()),
        })
        .boxed();
    let mut session = Session::start(spec, answers)?;
    let sends = Arc::new(Semaphore::new(SENDS_IN_FLIGHT));
    let mut sending = tokio::task::JoinSet::new();
    for seq in 0..spec.requests as u64 {
        let (id, target, lane) = session.due(spec, seq).await?;
        let t = &spec.targets[target];
        let payload = &t.payloads[(seq as usize / spec.targets.len()) % t.payloads.len()];
        anyhow::ensure!(
            payload.header_length.is_none() || transport.carries_binary(),
            "this transport carries JSON bodies only"
        );
        let message = Message {
            body: payload.body.clone(),
            properties: Properties {
                message_id: Some(id.clone()),
                correlation_id: Some(id),
                deadline_ms: deadline_ms(spec, &session, seq),
                header_length: payload.header_length.map(|l| l as u64),
                ..Properties::default()
            },
        };
        let queue = queues::requests(&t.model, lane);
        let permit = sends.clone().acquire_owned().await?;
        let (transport, sender, ledger) = (
            transport.clone(),
            inbox.sender.clone(),
            session.ledger.clone(),
        );
        sending.spawn(async move {
            let sent = match lane {
                Lane::Realtime => sender.send(&queue, message).await,
                Lane::Batch => transport.publish(&queue, message).await,
            };
            if let Err(e) = sent {
                eprintln!("ember-loadtest: sending request {seq}: {e}");
                ledger.refused(seq);
            }
            drop(permit);
        });
    }
    sending.join_all().await;
    let (state, started) = session.finish(spec).await?;
    Ok(report(state, spec, started))
}

/// Request `seq`'s deadline (unix ms), `spec.deadline` after its intended send time.
fn deadline_ms(spec: &LoadSpec, session: &Session, seq: u64) -> Option<u64> {
    let deadline = spec.deadline?;
    let intended = session
        .ledger
        .state
        .lock()
        .unwrap()
        .pending
        .get(&seq)?
        .intended;
    let at = SystemTime::now() + deadline - intended.elapsed().min(deadline);
    Some(at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// A bar on stderr (hidden when stderr is not a terminal) with the live rate and p99.
fn progress_bar(label: &str, requests: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} answered  {msg}",
    )
    .expect("valid template");
    let bar = ProgressBar::new(requests as u64)
        .with_style(style)
        .with_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Closes a timeline interval every `SAMPLE_EVERY`, and the last one (up to the last answer)
/// once `done` fires, showing each on the progress bar.
async fn sample(
    ledger: Arc<Ledger>,
    started: Instant,
    mut probe: Option<Probe>,
    progress: ProgressBar,
    mut done: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval_at((started + SAMPLE_EVERY).into(), SAMPLE_EVERY);
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut done => true,
        };
        let (worker_rss_bytes, worker_cpu_cores) = probe.as_mut().map_or((None, None), Probe::read);
        let worker_open_fds = probe.as_ref().and_then(Probe::open_fds);
        let now = Instant::now();
        let mut state = ledger.state.lock().unwrap();
        let since = state.timeline.last().map_or(0.0, |s| s.t_s);
        let interval = state.interval.take().unwrap_or_else(new_histogram);
        let end = match state.last_answer {
            Some(answer) if last => answer,
            _ => now,
        };
        let t_s = end.duration_since(started).as_secs_f64();
        if last && (interval.is_empty() || t_s <= since) {
            return;
        }
        let ms = |q: f64| interval.value_at_quantile(q) as f64 / 1000.0;
        let sample = Sample {
            t_s,
            answered_rps: interval.len() as f64 / (t_s - since).max(1e-3),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: interval.max() as f64 / 1000.0,
            worker_rss_bytes,
            worker_cpu_cores,
            worker_open_fds,
        };
        let answered = state.answered.len() as u64;
        state.timeline.push(sample.clone());
        drop(state);
        if last {
            return;
        }
        let worker = match (sample.worker_rss_bytes, sample.worker_cpu_cores) {
            (Some(rss), Some(cpu)) => format!(", worker {} MiB, {cpu:.2} cores", rss >> 20),
            _ => String::new(),
        };
        progress.set_position(answered);
        progress.set_message(format!(
            "{:.0}/s, p99 {:.1} ms{worker}",
            sample.answered_rps, sample.p99_ms
        ));
    }
}

/// Matches answers to pending requests and records their latency.
async fn collect(
    mut answers: impl futures::Stream<Item = Answer> + Unpin,
    ledger: Arc<Ledger>,
    prefix: String,
) {
    while let Some(answer) = answers.next().await {
        let now = answer.at;
        let Some(seq) = answer
            .correlation_id
            .as_ref()
            .and_then(|id| id.strip_prefix(&prefix)?.parse::<u64>().ok())
        else {
            continue; // not this run's (an earlier run's leftover result)
        };
        let mut state = ledger.state.lock().unwrap();
        let Some(pending) = state.pending.remove(&seq) else {
            if state.answered.contains_key(&seq) {
                state.duplicates += 1;
            }
            continue;
        };
        state.answered.insert(seq, (pending.intended, now));
        state.last_answer = Some(now);
        let key = (pending.target, pending.lane);
        let micros = now.duration_since(pending.intended).as_micros().max(1) as u64;
        state
            .histograms
            .entry(key)
            .or_insert_with(new_histogram)
            .saturating_record(micros);
        state
            .interval
            .get_or_insert_with(new_histogram)
            .saturating_record(micros);
        if let Some(code) = answer.error_code {
            *state.errors.entry(key).or_default() += 1;
            *state.codes.entry(code).or_default() += 1;
        }
        if state.pending.is_empty() {
            ledger.idle.notify_waiters();
        }
        drop(state);
        ledger.release();
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn error_code(properties: &BasicProperties) -> Option<String> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get("ember-error-code")?
    {
        AMQPValue::LongString(code) => Some(code.to_string()),
        AMQPValue::ShortString(code) => Some(code.to_string()),
        _ => None,
    }
}

fn lane_report(model: &str, lane: &str, histogram: &Histogram<u64>, errors: u64) -> LaneReport {
    let ms = |micros: u64| micros as f64 / 1000.0;
    LaneReport {
        model: model.to_owned(),
        lane: lane.to_owned(),
        answered: histogram.len(),
        errors,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    }
}

fn report(state: State, spec: &LoadSpec, started: Instant) -> LoadReport {
    let mut overall = new_histogram();
    let mut lanes = Vec::new();
    let mut keys: Vec<_> = state.histograms.keys().copied().collect();
    keys.sort_by_key(|(target, lane)| (*target, lane.as_str()));
    for key in keys {
        let histogram = &state.histograms[&key];
        overall.add(histogram).expect("same bounds");
        let errors = state.errors.get(&key).copied().unwrap_or(0);
        lanes.push(lane_report(
            &spec.targets[key.0].model,
            key.1.as_str(),
            histogram,
            errors,
        ));
    }
    let answered = state.answered.len() as u64;
    let duration = state
        .last_answer
        .map_or(Duration::ZERO, |last| last.duration_since(started));
    let errors = state.codes.values().sum();
    LoadReport {
        sent: spec.requests as u64 - state.publish_failures,
        answered,
        lost: state.pending.len() as u64,
        still_queued: 0,
        duplicates: state.duplicates,
        publish_failures: state.publish_failures,
        errors: state.codes,
        duration_s: duration.as_secs_f64(),
        throughput_rps: answered as f64 / duration.as_secs_f64().max(1e-9),
        offered_rps: match spec.arrival {
            Arrival::Fixed { rate } | Arrival::Poisson { rate } => Some(rate),
            Arrival::Closed { .. } | Arrival::Trace { .. } => None,
        },
        first_answer_s: state
            .answered
            .get(&0)
            .map(|(sent, answered)| answered.duration_since(*sent).as_secs_f64()),
        answers: {
            let since = |at: &Instant| at.saturating_duration_since(started).as_secs_f64();
            let mut answers: Vec<_> = state.answered.iter().collect();
            answers.sort_unstable_by_key(|(seq, _)| **seq);
            answers
                .into_iter()
                .map(|(_, (sent, answered))| (since(sent), since(answered)))
                .collect()
        },
        lanes,
        overall: lane_report("*", "*", &overall, errors),
        timeline: state.timeline,
    }
}

impl LoadReport {
    /// Mean CPU cores the worker kept busy over the run, when it was sampled.
    pub fn worker_cpu_cores(&self) -> Option<f64> {
        let cores: Vec<f64> = self
            .timeline
            .iter()
            .filter_map(|s| s.worker_cpu_cores)
            .collect();
        (!cores.is_empty()).then(|| cores.iter().sum::<f64>() / cores.len() as f64)
    }
}

/// A Markdown summary of `report`: totals, then latency per model and lane.
pub fn markdown(report: &LoadReport) -> String {
    let unanswered = match report.still_queued {
        0 => format!("{}", report.lost),
        queued => format!(
            "{} ({queued} still queued: no worker took them)",
            report.lost
        ),
    };
    let mut out = format!(
        "sent {}, answered {}, unanswered {unanswered}, duplicates {}, publish failures {}, {:.0} req/s{} over {:.1} s\n",
        report.sent,
        report.answered,
        report.duplicates,
        report.publish_failures,
        report.throughput_rps,
        report
            .offered_rps
            .map(|r| format!(" (offered {r:.0})"))
            .unwrap_or_default(),
        report.duration_s
    );
    for (code, count) in &report.errors {
        out += &format!("- error {code}: {count}\n");
    }
    let rss = report
        .timeline
        .iter()
        .filter_map(|s| s.worker_rss_bytes)
        .max();
    if let (Some(cores), Some(rss)) = (report.worker_cpu_cores(), rss) {
        out += &format!(
            "worker: {cores:.2} cores busy on average ({:.0} µs of CPU per answer), peak RSS {:.1} MiB\n",
            cores * 1e6 / report.throughput_rps.max(1e-9),
            rss as f64 / (1 << 20) as f64
        );
    }
    out +=
        "\n| model | lane | answered | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
    for l in report.lanes.iter().chain([&report.overall]) {
        out += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            l.model,
            l.lane,
            l.answered,
            l.errors,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_to_the_rate() {
        let mut rng = Rng::new(7);
        let n = 100_000;
        let total: f64 = (0..n).map(|_| -(1.0 - rng.unit()).ln() / 500.0).sum();
        let rate = n as f64 / total;
        assert!((rate - 500.0).abs() < 10.0, "{rate}");
    }
}
