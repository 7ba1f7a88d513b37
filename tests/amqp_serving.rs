//! Serving through a real RabbitMQ: a worker (in this process, or `ember serve` processes that
//! get killed) answers requests from its queues; every request is answered, none lost.

mod common;

use bytes::Bytes;
use common::load::{Answers, publish_many, spawn_worker};
use common::{broker, held_out, image_request, repo_with, unique_model};
use ember::batcher::BatchConfig;
use ember::protocol::{ErrorCode, Lane, Reply, TensorData, decode_reply};
use ember::registry::Registry;
use ember::store::Repository;
use ember::transport::amqp::AmqpTransport;
use ember::transport::{ClientTransport, Message, Properties, Subscription, Transport, queues};
use ember::worker::{RequestLimits, Worker, WorkerConfig};
use futures::StreamExt;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A worker in this process serving one fresh model over RabbitMQ.
struct Served {
    model: String,
    transport: AmqpTransport,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
    _repo: tempfile::TempDir,
}

impl Served {
    async fn start(prefix: &str) -> Self {
        let model = unique_model(prefix);
        let transport = broker(|c| c).await;
        transport.declare(&model).await.unwrap();
        Self::start_on(model, transport).await
    }

    async fn start_on(model: String, transport: AmqpTransport) -> Self {
        let repo = repo_with(&[&model]);
        let registry = Arc::new(Registry::new(
            Repository::open(repo.path().to_str().unwrap()).unwrap(),
            BatchConfig::default(),
        ));
        let config = WorkerConfig {
            limits: RequestLimits {
                max_request_bytes: MAX_REQUEST_BYTES,
                ..RequestLimits::default()
            },
            ..WorkerConfig::for_batch_size(32)
        };
        let worker = Worker::new(Arc::new(transport.clone()), registry, config);
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn({
            let (shutdown, models) = (shutdown.clone(), vec![model.parse().unwrap()]);
            async move { worker.run(&models, shutdown).await.unwrap() }
        });
        Self {
            model,
            transport,
            shutdown,
            serving,
            _repo: repo,
        }
    }

    /// Realtime RPC through direct reply-to.
    async fn call(&self, body: impl Into<Bytes>, properties: Properties) -> (Properties, Reply) {
        let message = Message {
            body: body.into(),
            properties,
        };
        let queue = queues::requests(&self.model, Lane::Realtime);
        let mut inbox = self.transport.inbox().await.unwrap();
        inbox.sender.send(&queue, message).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), inbox.replies.next())
            .await
            .expect("a reply within 30 s")
            .expect("the inbox open");
        let decoded = decode_reply(&reply.body).expect("a well-formed reply");
        (reply.properties, decoded)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.serving.await.unwrap();
        self.transport.delete(&self.model).await.unwrap();
    }
}

fn with_id(id: &str) -> Properties {
    Properties {
        message_id: Some(id.into()),
        ..Properties::default()
    }
}

fn code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Ok(_) => None,
        Reply::Err(e) => Some(e.code),
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Message {
    let delivery = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a message within 30 s")
        .expect("subscription open");
    let message = delivery.message.clone();
    delivery.settle.ack().await.unwrap();
    message
}

#[tokio::test]
async fn realtime_rpc_is_answered_through_direct_reply_to() {
    let served = Served::start("rpc").await;
    let data = held_out();
    for i in 0..3 {
        let properties = Properties {
            correlation_id: Some(format!("corr-{i}")),
            ..with_id(&format!("m-{i}"))
        };
        let (reply_properties, reply) = served
            .call(
                image_request(&format!("r-{i}"), data.image(i), 1),
                properties,
            )
            .await;
        assert_eq!(
            reply_properties.correlation_id.as_deref(),
            Some(format!("corr-{i}").as_str())
        );
        let Reply::Ok(response) = reply else {
            panic!("an answer")
        };
        assert_eq!(response.id, format!("r-{i}"));
        assert_eq!(
            response.outputs[1].data,
            TensorData::I64(vec![data.labels[i].into()])
        );
    }
    // Answered requests are acked, never dead-lettered (RabbitMQ returns mandatory direct
    // replies as unroutable even when it delivers them).
    served.shutdown.cancel();
    let dead = queues::dead(&served.model);
    let transport = served.transport.clone();
    let model = served.model.clone();
    served.serving.await.unwrap();
    assert_eq!(transport.depth(&dead).await.unwrap(), 0);
    transport.delete(&model).await.unwrap();
}

#[tokio::test]
async fn batch_results_go_to_the_result_queue_keyed_by_message_id() {
    let served = Served::start("batch").await;
    let data = held_out();
    let mut results = served
        .transport
        .subscribe(&[queues::results(&served.model)], 100)
        .await
        .unwrap();
    for i in 0..20 {
        let message = Message {
            body: image_request(&format!("r-{i}"), data.image(i), 1).into(),
            properties: with_id(&format!("m-{i}")),
        };
        let queue = queues::requests(&served.model, Lane::Batch);
        served.transport.publish(&queue, message).await.unwrap();
    }
    let mut seen = HashMap::new();
    for _ in 0..20 {
        let message = next(&mut results).await;
        let correlation = message.properties.correlation_id.clone().unwrap();
        let Reply::Ok(response) = decode_reply(&message.body).unwrap() else {
            panic!("an answer")
        };
        assert_eq!(
            message.properties.model.as_deref(),
            Some(served.model.as_str())
        );
        seen.insert(correlation, response.id);
    }
    for i in 0..20 {
        assert_eq!(seen[&format!("m-{i}")], format!("r-{i}"));
    }
    results.stop().await;
    served.stop().await;
}

#[tokio::test]
async fn poison_is_answered_with_errors_and_the_queue_keeps_flowing() {
    let served = Served::start("poison").await;
    let data = held_out();
    let valid = image_request("ok", data.image(0), 1);
    let wrong_shape = image_request("shape", &data.image(0)[..32], 1);
    let cases: Vec<(Vec<u8>, Properties, ErrorCode)> = vec![
        (
            b"not json".to_vec(),
            with_id("a"),
            ErrorCode::InvalidArgument,
        ),
        (Vec::new(), with_id("b"), ErrorCode::InvalidArgument),
        (
            vec![0xff, 0xfe, 0x00],
            with_id("c"),
            ErrorCode::InvalidArgument,
        ),
        (
            br#"{"inputs":[]}"#.to_vec(),
            with_id("d"),
            ErrorCode::InvalidArgument,
        ),
        (
            br#"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":["x"]}]}"#
                .to_vec(),
            with_id("e"),
            ErrorCode::InvalidArgument,
        ),
        (wrong_shape, with_id("f"), ErrorCode::InvalidArgument),
        (
            vec![b' '; MAX_REQUEST_BYTES + 1],
            with_id("g"),
            ErrorCode::ResourceExhausted,
        ),
        (
            valid.clone(),
            Properties {
                version: Some("no-such-version".into()),
                ..with_id("h")
            },
            ErrorCode::NotFound,
        ),
        (
            valid.clone(),
            Properties {
                deadline_ms: Some(1_000),
                ..with_id("i")
            },
            ErrorCode::DeadlineExceeded,
        ),
    ];
    for (body, properties, expected) in cases {
        let id = properties.message_id.clone();
        let (_, reply) = served.call(body, properties).await;
        assert_eq!(code(&reply), Some(expected), "message {id:?}: {reply:?}");
    }
    // Poison without reply_to is answered on the result queue, and acked.
    let mut results = served
        .transport
        .subscribe(&[queues::results(&served.model)], 10)
        .await
        .unwrap();
    let batch = queues::requests(&served.model, Lane::Batch);
    let poison = Message {
        body: Bytes::from_static(b"{{{"),
        properties: with_id("no-reply"),
    };
    served.transport.publish(&batch, poison).await.unwrap();
    let answered = next(&mut results).await;
    assert_eq!(
        answered.properties.correlation_id.as_deref(),
        Some("no-reply")
    );
    assert_eq!(
        answered.properties.error_code,
        Some(ErrorCode::InvalidArgument)
    );
    let (_, after) = served.call(valid, with_id("valid")).await;
    assert_eq!(code(&after), None, "a valid request after the poison");
    assert_eq!(served.transport.depth(&batch).await.unwrap(), 0);
    results.stop().await;
    served.stop().await;
}

#[tokio::test]
async fn a_request_that_keeps_failing_workers_is_dead_lettered_with_the_reason() {
    let model = unique_model("crashloop");
    let transport = broker(|c| c).await;
    transport.declare(&model).await.unwrap();
    let batch = queues::requests(&model, Lane::Batch);
    let data = held_out();
    let message = Message {
        body: image_request("doomed", data.image(0), 1).into(),
        properties: with_id("doomed"),
    };
    transport.publish(&batch, message).await.unwrap();
    // Workers that die holding it: each unsettled delivery goes back to the queue.
    {
        let mut sub = transport
            .subscribe(std::slice::from_ref(&batch), 1)
            .await
            .unwrap();
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            if delivery.redeliveries > ember::results::DEFAULT_MAX_REDELIVERIES {
                break;
            }
            drop(delivery);
        }
    }
    let mut dead = transport
        .subscribe(&[queues::dead(&model)], 10)
        .await
        .unwrap();
    let mut results = transport
        .subscribe(&[queues::results(&model)], 10)
        .await
        .unwrap();
    let served = Served::start_on(model, transport.clone()).await;
    let letter = next(&mut dead).await;
    assert_eq!(letter.properties.message_id.as_deref(), Some("doomed"));
    assert_eq!(letter.properties.error_code, Some(ErrorCode::Internal));
    let reason = letter.properties.error.unwrap();
    assert!(reason.contains("without an answer"), "{reason}");
    let answer = next(&mut results).await;
    assert_eq!(answer.properties.error_code, Some(ErrorCode::Internal));
    dead.stop().await;
    results.stop().await;
    served.stop().await;
}

/// `requests` batch requests streaming through an `ember serve` process.
struct Stream {
    model: String,
    repo: tempfile::TempDir,
    transport: AmqpTransport,
    answers: Answers,
}

impl Stream {
    /// Starts the worker, publishes, and returns once `answered` requests are answered.
    async fn start(prefix: &str, requests: usize, answered: usize) -> (Child, Self) {
        let model = unique_model(prefix);
        let repo = repo_with(&[&model]);
        let transport = broker(|c| c).await;
        // Declared here too (idempotent, same arguments) so the test can consume results at once.
        transport.declare(&model).await.unwrap();
        let worker = spawn_worker(repo.path(), &model);
        let mut answers = Answers::open(&transport, &model).await;
        publish_many(&transport, &model, requests).await;
        answers.until(answered, Duration::from_secs(120)).await;
        let stream = Self {
            model,
            repo,
            transport,
            answers,
        };
        (worker, stream)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing() {
    const REQUESTS: usize = 10_000;
    let (
        mut first,
        Stream {
            model,
            repo,
            transport,
            mut answers,
        },
    ) = Stream::start("kill", REQUESTS, REQUESTS / 5).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let mut second = spawn_worker(repo.path(), &model);
    answers.until(REQUESTS, Duration::from_secs(300)).await;
    eprintln!(
        "kill -9: {} answered, {} duplicates",
        answers.seen.len(),
        answers.duplicates()
    );
    // Only what the killed worker held unacked can be answered twice: its prefetch window.
    let window = 2 * WorkerConfig::for_batch_size(32).prefetch;
    assert!(
        answers.duplicates() <= window,
        "{} duplicates",
        answers.duplicates()
    );
    assert_eq!(
        transport.depth(&queues::dead(&model)).await.unwrap(),
        0,
        "nothing dead-lettered"
    );
    second.kill().unwrap();
    second.wait().unwrap();
    answers.results.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_cleanly() {
    const REQUESTS: usize = 3_000;
    let (
        mut first,
        Stream {
            model,
            repo,
            transport,
            mut answers,
        },
    ) = Stream::start("term", REQUESTS, REQUESTS / 10).await;
    let signalled = Instant::now();
    common::sigterm(&first);
    let exit = loop {
        if let Some(exit) = first.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "no exit within the drain timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let mut second = spawn_worker(repo.path(), &model);
    answers.until(REQUESTS, Duration::from_secs(300)).await;
    // A drained worker settles everything it took. On quorum queues RabbitMQ (3.10) may still
    // hand back a few acked after the consumer's cancel (docs/reliability.md): at most the
    // worker's unacked window is answered twice, never lost.
    let window = 2 * WorkerConfig::for_batch_size(32).prefetch;
    assert!(
        answers.duplicates() <= window,
        "{} duplicates",
        answers.duplicates()
    );
    second.kill().unwrap();
    second.wait().unwrap();
    answers.results.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test]
async fn a_python_pika_client_gets_its_answer() {
    let served = Served::start("pika").await;
    let data = held_out();
    let inputs = serde_json::json!([
        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data.image(3)}
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pika_rpc.py");
    // The tensor as JSON numbers or binary tensor data; the outputs asked for either way.
    for (framing, outputs) in [
        ("json", "json-out"),
        ("binary", "json-out"),
        ("json", "binary-out"),
        ("binary", "binary-out"),
    ] {
        let mut client = Command::new("python3");
        client.args([
            script,
            &common::amqp_url(),
            &served.model,
            &inputs.to_string(),
            framing,
            outputs,
        ]);
        let output = tokio::task::spawn_blocking(move || client.output())
            .await
            .unwrap()
            .expect("python3 (with pika: bash .ci/run installs it)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(printed["correlation_id"], "py-corr");
        assert_eq!(printed["error_code"], serde_json::Value::Null, "{framing}");
        assert_eq!(
            printed["framed"],
            outputs == "binary-out",
            "{framing} {outputs}"
        );
        let reply = &printed["reply"];
        assert_eq!(reply["id"], "py-1");
        assert_eq!(reply["model_name"], served.model.as_str());
        assert_eq!(reply["outputs"][1]["name"], "label");
        assert_eq!(reply["outputs"][1]["data"][0], i64::from(data.labels[3]));
    }
    served.stop().await;
}

fn ember(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .env("EMBER_AMQP_URL", common::amqp_url())
        .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
        .env("EMBER_LOG", "warn")
        .output()
        .expect("run ember")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_declares_sends_and_asks_through_the_broker() {
    let model = unique_model("cli");
    let declared = ember(&["queues", "declare", "--model", &model]);
    assert!(declared.status.success(), "{declared:?}");
    let transport = broker(|c| c).await;
    let batch = queues::requests(&model, Lane::Batch);
    assert_eq!(transport.depth(&batch).await.unwrap(), 0);

    let dir = tempfile::tempdir().unwrap();
    let data = held_out();
    let lines: Vec<String> = (0..3)
        .map(|i| String::from_utf8(image_request(&format!("line-{i}"), data.image(i), 1)).unwrap())
        .collect();
    let jsonl = dir.path().join("requests.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let sent = ember(&[
        "send",
        "--binary",
        "--model",
        &model,
        "--input",
        jsonl.to_str().unwrap(),
    ]);
    assert!(sent.status.success(), "{sent:?}");
    assert_eq!(transport.depth(&batch).await.unwrap(), 3);
    // Queued as binary tensor data: a JSON header, then the image's 256 bytes.
    let mut queued = transport
        .subscribe(std::slice::from_ref(&batch), 3)
        .await
        .unwrap();
    let mut peeked = Vec::new();
    for _ in 0..3 {
        let delivery = queued.next().await.unwrap();
        let message = &delivery.message;
        let header = message.properties.header_length.expect("framed") as usize;
        assert_eq!(message.body.len(), header + 64 * 4);
        peeked.push(delivery);
    }
    // Put back once nothing here consumes, so the broker hands them to the worker.
    queued.stop().await;
    for delivery in peeked {
        delivery.settle.requeue().await.unwrap();
    }
    queued.close().await;

    let served = Served::start_on(model.clone(), transport.clone()).await;
    let mut answers = Answers::open(&transport, &model).await;
    answers.until(3, Duration::from_secs(30)).await;
    // `ember send` used each request's id as its message id.
    for i in 0..3 {
        assert!(answers.seen.contains_key(&format!("line-{i}")));
    }

    // Asking for binary outputs: `ember infer` prints the framed answer as JSON.
    let request = dir.path().join("request.json");
    let mut asking: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    asking["parameters"] = serde_json::json!({"binary_data_output": true});
    std::fs::write(&request, asking.to_string()).unwrap();
    let model_arg = model.clone();
    let request_arg = request.to_str().unwrap().to_owned();
    let asked = tokio::task::spawn_blocking(move || {
        ember(&[
            "infer",
            "--transport",
            "amqp",
            "--model",
            &model_arg,
            "--input",
            &request_arg,
        ])
    })
    .await
    .unwrap();
    assert!(asked.status.success(), "{asked:?}");
    let reply: serde_json::Value = serde_json::from_slice(&asked.stdout).unwrap();
    assert_eq!(reply["id"], "line-1");
    assert_eq!(reply["outputs"][1]["data"][0], i64::from(data.labels[1]));
    answers.results.stop().await;
    served.stop().await;
}

#[test]
fn cli_infer_answers_no_worker_and_no_answer_as_error_responses() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("request.json");
    std::fs::write(&request, image_request("42", held_out().image(0), 1)).unwrap();
    let infer = |model: &str| {
        let args = ["infer", "--model", model, "--timeout", "1s", "--input"];
        let mut args = args.to_vec();
        args.push(request.to_str().unwrap());
        let output = ember(&args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("lapin"), "library noise: {stderr}");
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(reply["id"], "42", "the request's id: {reply}");
        reply
    };
    // No queue: nothing serves the model.
    let unserved = unique_model("cli-none");
    let reply = infer(&unserved);
    assert_eq!(reply["code"], "NOT_FOUND", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("no worker serves"),
        "{reply}"
    );
    // A queue without a worker: no answer within --timeout.
    let idle = unique_model("cli-idle");
    assert!(
        ember(&["queues", "declare", "--model", &idle])
            .status
            .success()
    );
    let reply = infer(&idle);
    assert_eq!(reply["code"], "DEADLINE_EXCEEDED", "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("within 1.0 s"),
        "{reply}"
    );
}
