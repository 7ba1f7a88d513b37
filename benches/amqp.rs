//! Serving through RabbitMQ, measured side by side in one run against its ceilings:
//!
//! - broker efficiency: requests/s through an Ember worker serving the identity model ÷ a
//!   minimal lapin publish → consume → ack loop (same message size, broker, prefetch); and
//!   ÷ the same loop where the consumer also publishes a confirmed reply before acking (the
//!   floor of any at-least-once RPC server);
//! - end to end: the digits CNN through RabbitMQ ÷ the same model in-process on batches of the
//!   same size (`ember demo`'s `model_only_rps`).
//!
//! Each figure is the median of `ROUNDS` interleaved rounds. Needs RabbitMQ (`EMBER_AMQP_URL`,
//! default the local broker). Run: `cargo bench --bench amqp` (`-- --requests N` to change N).

use bytes::Bytes;
use ember::batcher::BatchConfig;
use ember::demo::{DemoOptions, model_only_rps};
use ember::models::Architecture;
use ember::protocol::{DataType, Lane, Tensor, TensorData, encode_request};
use ember::registry::Registry;
use ember::store::{Manifest, ModelName, Repository, Version, sha256_hex};
use ember::train::digits;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use ember::transport::{Message, Properties, Transport, TransportError, queues};
use ember::worker::{Worker, WorkerConfig};
use futures::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 3;
const MAX_BATCH: usize = 32;
/// Publishes awaiting their confirm at once, for every producer here.
const WINDOW: usize = 256;

fn url() -> String {
    std::env::var("EMBER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn next(consumer: &mut Consumer) -> lapin::message::Delivery {
    std::future::poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx))
        .await
        .expect("consumer open")
        .expect("delivery")
}

/// Publishes `bodies` to `queue` on `channel` with confirms, `WINDOW` at a time.
async fn produce(channel: Channel, queue: String, bodies: Arc<Vec<Bytes>>) {
    let mut pending = std::collections::VecDeque::new();
    for body in bodies.iter() {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() == WINDOW {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for confirm in pending {
        confirm.await.unwrap();
    }
}

/// The minimal loop: a producer, and a consumer that acks; with `reply` the consumer first
/// publishes a confirmed reply, which a third party consumes and acks (the shape of serving).
/// Requests per second, first publish to last ack.
async fn raw_loop(
    connection: &Connection,
    bodies: Arc<Vec<Bytes>>,
    prefetch: u16,
    reply: bool,
) -> f64 {
    let channel = connection.create_channel().await.unwrap();
    let name = format!("bench.raw.{}", std::process::id());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in [&name, &format!("{name}.replies")] {
        channel
            .queue_declare(queue.as_str().into(), durable, arguments.clone())
            .await
            .unwrap();
    }
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let replies = connection.create_channel().await.unwrap();
    replies
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let producer = connection.create_channel().await.unwrap();
    producer
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            name.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut reply_consumer = replies
        .basic_consume(
            format!("{name}.replies").into(),
            "bench-replies".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let count = bodies.len();
    let started = Instant::now();
    let producing = tokio::spawn(produce(producer, name.clone(), bodies));
    let serving = tokio::spawn({
        let (replies, reply_queue) = (replies.clone(), format!("{name}.replies"));
        async move {
            let mut acks = tokio::task::JoinSet::new();
            for _ in 0..count {
                let delivery = next(&mut consumer).await;
                let (replies, reply_queue) = (replies.clone(), reply_queue.clone());
                acks.spawn(async move {
                    if reply {
                        replies
                            .basic_publish(
                                "".into(),
                                reply_queue.into(),
                                BasicPublishOptions::default(),
                                &delivery.data,
                                BasicProperties::default().with_delivery_mode(2),
                            )
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                    }
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                });
            }
            while acks.join_next().await.is_some() {}
        }
    });
    if reply {
        // The caller's side too: each reply is consumed and acked, as Ember's results are.
        let mut acks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let delivery = next(&mut reply_consumer).await;
            acks.spawn(async move { delivery.ack(BasicAckOptions::default()).await.unwrap() });
        }
        while acks.join_next().await.is_some() {}
    }
    serving.await.unwrap();
    let rate = count as f64 / started.elapsed().as_secs_f64();
    producing.await.unwrap();
    // Deleting a queue under a live consumer of this connection upsets lapin: close them first.
    for open in [&consumer_channel, &replies] {
        open.close(200, "done".into()).await.unwrap();
    }
    for queue in [&name, &format!("{name}.replies")] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    rate
}

/// Requests per second through an Ember worker serving `model` from `repo`: batch requests
/// in, results out on the model's result queue; first publish to last result.
async fn through_ember(repo: &Repository, model: &str, bodies: Arc<Vec<Bytes>>) -> f64 {
    let transport = AmqpTransport::connect(AmqpConfig::new(url()))
        .await
        .unwrap();
    transport.declare(model).await.unwrap();
    let registry = Arc::new(Registry::new(
        repo.clone(),
        BatchConfig {
            max_batch_size: MAX_BATCH,
            ..BatchConfig::default()
        },
    ));
    let worker = Worker::new(
        Arc::new(transport.clone()),
        registry,
        WorkerConfig::for_batch_size(MAX_BATCH),
    );
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let (shutdown, models) = (shutdown.clone(), vec![model.parse::<ModelName>().unwrap()]);
        async move { worker.run(&models, shutdown).await.unwrap() }
    });
    let mut results = transport
        .subscribe(&[queues::results(model)], 2 * WINDOW)
        .await
        .unwrap();
    // Let the worker load and start consuming before the clock starts.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let count = bodies.len();
    let started = Instant::now();
    let producing = tokio::spawn({
        let (transport, queue) = (transport.clone(), queues::requests(model, Lane::Batch));
        async move {
            let mut pending: tokio::task::JoinSet<Result<(), TransportError>> = Default::default();
            for (i, body) in bodies.iter().enumerate() {
                let message = Message {
                    body: body.clone(),
                    properties: Properties {
                        message_id: Some(i.to_string()),
                        ..Properties::default()
                    },
                };
                if pending.len() == WINDOW {
                    pending.join_next().await.unwrap().unwrap().unwrap();
                }
                let (transport, queue) = (transport.clone(), queue.clone());
                pending.spawn(async move { transport.publish(&queue, message).await });
            }
            while let Some(published) = pending.join_next().await {
                published.unwrap().unwrap();
            }
        }
    });
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let delivery = results.next().await.expect("a result");
        assert_eq!(delivery.message.properties.error_code, None);
        acks.spawn(delivery.settle.ack());
    }
    while acks.join_next().await.is_some() {}
    let rate = count as f64 / started.elapsed().as_secs_f64();
    producing.await.unwrap();
    shutdown.cancel();
    serving.await.unwrap();
    results.stop().await;
    transport.delete(model).await.unwrap();
    rate
}

fn request(id: usize, pixels: &[f32]) -> Bytes {
    let input = Tensor {
        name: "input".into(),
        shape: vec![1, pixels.len()],
        datatype: DataType::Fp32,
        data: TensorData::F32(pixels.to_vec()),
    };
    encode_request(&id.to_string(), &[input]).into()
}

async fn identity_repo(dir: &std::path::Path, name: &str) -> Repository {
    let repo = Repository::open(dir.to_str().unwrap()).unwrap();
    let architecture = Architecture::Identity {
        width: digits::PIXELS,
    };
    let (inputs, outputs) = architecture.signature();
    let manifest = Manifest {
        name: name.parse().unwrap(),
        version: Version::parse("1").unwrap(),
        architecture,
        inputs,
        outputs,
        labels: Vec::new(),
        sha256: sha256_hex(&[]),
        metrics: Default::default(),
        training: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    repo.publish(&manifest, Bytes::new()).await.unwrap();
    let production = Version::parse("production").unwrap();
    repo.set_alias(&manifest.name, &production, &manifest.version)
        .await
        .unwrap();
    repo
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000usize);
    let held_out = digits::split(&digits::load(), 7, 0.2).1;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..requests)
            .map(|i| request(i, held_out.image(i % held_out.len())))
            .collect(),
    );
    let connection = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at EMBER_AMQP_URL");
    let echo_dir = tempfile::tempdir().unwrap();
    let echo = format!("bench-echo-{}", std::process::id());
    let echo_repo = identity_repo(echo_dir.path(), &echo).await;
    let shipped = Repository::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).unwrap();
    let digits_model: ModelName = "digits".parse().unwrap();
    let prefetch = WorkerConfig::for_batch_size(MAX_BATCH).prefetch as u16;
    let demo = DemoOptions {
        requests,
        realtime_every: 1,
        batch: BatchConfig {
            max_batch_size: MAX_BATCH,
            ..BatchConfig::default()
        },
        repo: shipped.clone(),
        model: digits_model.clone(),
    };
    let production = Version::parse("production").unwrap();
    let version = shipped.resolve(&digits_model, &production).await.unwrap();

    let (mut raw, mut raw_reply, mut ember_echo, mut ember_digits, mut model_only) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=ROUNDS {
        raw.push(raw_loop(&connection, bodies.clone(), prefetch, false).await);
        raw_reply.push(raw_loop(&connection, bodies.clone(), prefetch, true).await);
        ember_echo.push(through_ember(&echo_repo, &echo, bodies.clone()).await);
        ember_digits.push(through_ember(&shipped, "digits", bodies.clone()).await);
        model_only.push(
            model_only_rps(&shipped, &digits_model, &version, &demo, &held_out)
                .await
                .unwrap(),
        );
        eprintln!(
            "round {round}: raw {:.0}/s, raw+reply {:.0}/s, ember echo {:.0}/s, ember digits {:.0}/s, model only {:.0}/s",
            raw[round - 1],
            raw_reply[round - 1],
            ember_echo[round - 1],
            ember_digits[round - 1],
            model_only[round - 1]
        );
    }
    let (raw, raw_reply, echo, digits, model) = (
        median(raw),
        median(raw_reply),
        median(ember_echo),
        median(ember_digits),
        median(model_only),
    );
    println!(
        "{requests} requests of {} bytes, prefetch {prefetch}, max batch {MAX_BATCH}, medians of {ROUNDS} rounds",
        bodies[0].len()
    );
    println!("raw lapin publish→consume→ack      {raw:>9.0} req/s");
    println!("raw lapin … + confirmed reply, consumed {raw_reply:>7.0} req/s");
    println!("ember, identity model               {echo:>9.0} req/s");
    println!("ember, digits CNN                   {digits:>9.0} req/s");
    println!("digits CNN in-process (model only)  {model:>9.0} req/s");
    println!(
        "broker efficiency  ember echo ÷ raw          {:.2}",
        echo / raw
    );
    println!(
        "                   ember echo ÷ raw+reply    {:.2}",
        echo / raw_reply
    );
    println!(
        "end to end         ember digits ÷ model only {:.2}",
        digits / model
    );
}
