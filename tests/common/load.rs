//! Load through `ember serve` processes over the test broker: numbered requests published,
//! their answers counted.

use super::{amqp_url, held_out, image_request};
use ember::protocol::{Lane, Reply, decode_reply};
use ember::transport::amqp::AmqpTransport;
use ember::transport::{Message, Properties, Subscription, Transport, TransportError, queues};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `ember serve` in its own process.
pub fn spawn_worker(repo: &std::path::Path, model: &str) -> Child {
    spawn_worker_via(repo, model, &amqp_url())
}

/// `ember serve` in its own process, reaching the broker at `url`.
pub fn spawn_worker_via(repo: &std::path::Path, model: &str, url: &str) -> Child {
    worker_command(repo, model, url)
        .spawn()
        .expect("start ember serve")
}

/// The command `spawn_worker_via` runs, for a test to add to.
pub fn worker_command(repo: &std::path::Path, model: &str, url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args(["serve", "--transport", "amqp", "--model", model])
        .arg("--model-repo")
        .arg(repo)
        .env("EMBER_AMQP_URL", url)
        .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
        .env("EMBER_LOG", "warn")
        .stdout(Stdio::null());
    command
}

/// Publishes `count` batch requests (message ids `m-0`...) to `model`, 256 awaiting confirms.
pub async fn publish_many(transport: &AmqpTransport, model: &str, count: usize) {
    publish_at(transport, model, 0..count, None).await;
}

/// Publishes the requests numbered `ids` (message ids `m-<i>`) to `model`, at `per_second`
/// requests per second when set (a steady load), else as fast as the broker confirms.
pub async fn publish_at(
    transport: &AmqpTransport,
    model: &str,
    ids: std::ops::Range<usize>,
    per_second: Option<f64>,
) {
    let data = held_out();
    let queue = queues::requests(model, Lane::Batch);
    let started = Instant::now();
    let mut pending: tokio::task::JoinSet<Result<(), TransportError>> = Default::default();
    let first = ids.start;
    for i in ids {
        if let Some(rate) = per_second {
            let due = started + Duration::from_secs_f64((i - first) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let message = Message {
            body: image_request(&format!("r-{i}"), data.image(i % data.len()), 1).into(),
            properties: Properties {
                message_id: Some(format!("m-{i}")),
                ..Properties::default()
            },
        };
        if pending.len() == 256 {
            pending.join_next().await.unwrap().unwrap().unwrap();
        }
        let (transport, queue) = (transport.clone(), queue.clone());
        pending.spawn(async move { transport.publish(&queue, message).await });
    }
    while let Some(published) = pending.join_next().await {
        published.unwrap().unwrap();
    }
}

/// Answers on `model`'s result queue, counted by correlation id.
pub struct Answers {
    /// The result queue's subscription.
    pub results: Box<dyn Subscription>,
    /// Answers per correlation id.
    pub seen: HashMap<String, usize>,
    /// The longest wait between two answers (or from opening to the first).
    pub longest_silence: Duration,
    /// Answers the broker delivered here again because this side's ack was lost with the
    /// broker (not counted as answers: no worker answered twice).
    pub redelivered: usize,
    /// When each answer (duplicates included) came, and the model version that gave it.
    pub versions: Vec<(Instant, String)>,
    last: Instant,
}

impl Answers {
    /// Subscribes to `model`'s result queue.
    pub async fn open(transport: &AmqpTransport, model: &str) -> Self {
        let results = transport
            .subscribe(&[queues::results(model)], 1000)
            .await
            .unwrap();
        Self {
            results,
            seen: HashMap::new(),
            longest_silence: Duration::ZERO,
            redelivered: 0,
            versions: Vec::new(),
            last: Instant::now(),
        }
    }

    /// Collects answers until `distinct` requests are answered.
    pub async fn until(&mut self, distinct: usize, within: Duration) {
        self.during(distinct, within).await;
        assert!(
            self.seen.len() >= distinct,
            "{} of {distinct} answered in time",
            self.seen.len()
        );
    }

    /// Collects answers for `period`, or until `distinct` requests are answered.
    pub async fn during(&mut self, distinct: usize, period: Duration) {
        let deadline = Instant::now() + period;
        while self.seen.len() < distinct {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(delivery)) = tokio::time::timeout(left, self.results.next()).await else {
                return;
            };
            self.longest_silence = self.longest_silence.max(self.last.elapsed());
            self.last = Instant::now();
            let message = &delivery.message;
            assert_eq!(message.properties.error_code, None, "an error answer");
            let id = message.properties.correlation_id.clone().unwrap();
            if delivery.redeliveries > 0 && self.seen.contains_key(&id) {
                self.redelivered += 1;
            } else {
                *self.seen.entry(id).or_default() += 1;
                let Ok(Reply::Ok(answer)) = decode_reply(&message.body) else {
                    panic!("not an answer: {:?}", message.body);
                };
                self.versions.push((self.last, answer.model_version));
            }
            // An ack lost with the broker (a restart) brings the answer again: a duplicate.
            let _ = delivery.settle.ack().await;
        }
    }

    /// Answers beyond the first per request.
    pub fn duplicates(&self) -> usize {
        self.seen.values().map(|n| n - 1).sum()
    }
}
