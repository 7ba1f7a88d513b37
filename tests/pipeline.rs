//! The embedded pipeline end to end: memory transport → decode/validate → batcher → Burn model
//! (the shipped digits CNN) → results, with every bad input answered and settled.

use bytes::Bytes;
use ember::batcher::BatchConfig;
use ember::protocol::{
    ErrorCode, ErrorResponse, InferResponse, Lane, Reply, TensorData, decode_reply,
};
use ember::registry::Registry;
use ember::store::Repository;
use ember::transport::memory::MemoryTransport;
use ember::transport::{Message, Properties, Subscription, Transport, queues};
use ember::worker::{RequestLimits, ServeError, Worker, WorkerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;
use common::{held_out, image_request, repo_with};

const REPLIES: &str = "test.replies";
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const MAX_REQUEST_ROWS: usize = 100;

struct Pipeline {
    transport: MemoryTransport,
    replies: Box<dyn Subscription>,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
    _repo: tempfile::TempDir,
}

fn worker(repo: &tempfile::TempDir, transport: &MemoryTransport) -> Worker {
    let registry = Arc::new(Registry::new(
        Repository::open(repo.path().to_str().unwrap()).unwrap(),
        BatchConfig::default(),
    ));
    let config = WorkerConfig {
        limits: RequestLimits {
            max_request_bytes: MAX_REQUEST_BYTES,
            max_request_rows: MAX_REQUEST_ROWS,
        },
        ..WorkerConfig::for_batch_size(32)
    };
    Worker::new(Arc::new(transport.clone()), registry, config)
}

/// Why a worker asked to serve `models` from `repo` does not start.
async fn refused(repo: &tempfile::TempDir, models: &[&str]) -> ServeError {
    let models: Vec<_> = models.iter().map(|m| m.parse().unwrap()).collect();
    let transport = MemoryTransport::new();
    let served = worker(repo, &transport)
        .run(&models, CancellationToken::new())
        .await;
    served.expect_err("the worker must not start")
}

impl Pipeline {
    async fn start(repo: tempfile::TempDir, models: &[&str]) -> Self {
        let transport = MemoryTransport::new();
        let worker = worker(&repo, &transport);
        let shutdown = CancellationToken::new();
        let models: Vec<_> = models.iter().map(|m| m.parse().unwrap()).collect();
        let serving = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { worker.run(&models, shutdown).await.unwrap() }
        });
        let replies = transport
            .subscribe(&[REPLIES.to_owned()], 1000)
            .await
            .unwrap();
        Self {
            transport,
            replies,
            shutdown,
            serving,
            _repo: repo,
        }
    }

    async fn send(&self, model: &str, lane: Lane, body: impl Into<Bytes>, properties: Properties) {
        let message = Message {
            body: body.into(),
            properties,
        };
        self.transport
            .publish(&queues::requests(model, lane), message)
            .await
            .unwrap();
    }

    /// Sends a realtime RPC and waits for its reply.
    async fn ask(
        &mut self,
        model: &str,
        version: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (Properties, Reply) {
        let properties = Properties {
            message_id: Some("msg-1".into()),
            correlation_id: Some("corr-1".into()),
            reply_to: Some(REPLIES.into()),
            version: version.map(Into::into),
            ..Properties::default()
        };
        self.send(model, Lane::Realtime, body, properties).await;
        let delivery = tokio::time::timeout(Duration::from_secs(30), self.replies.next())
            .await
            .expect("a reply within 30 s")
            .unwrap();
        let reply = decode_reply(&delivery.message.body).expect("a well-formed reply");
        let properties = delivery.message.properties.clone();
        delivery.settle.ack().await.unwrap();
        (properties, reply)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.serving.await.unwrap();
    }
}

fn ok(reply: Reply) -> InferResponse {
    match reply {
        Reply::Ok(response) => response,
        Reply::Err(e) => panic!("expected a response, got {e:?}"),
    }
}

fn err(reply: Reply) -> ErrorResponse {
    match reply {
        Reply::Err(e) => e,
        Reply::Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[tokio::test]
async fn answers_realtime_rpc_with_the_correct_digit() {
    let mut p = Pipeline::start(repo_with(&["digits"]), &["digits"]).await;
    let data = held_out();
    for i in [0, 1, 2] {
        let (properties, reply) = p
            .ask("digits", None, image_request("req-7", data.image(i), 1))
            .await;
        assert_eq!(properties.correlation_id.as_deref(), Some("corr-1"));
        let response = ok(reply);
        assert_eq!(
            (
                response.id.as_str(),
                response.model_name.as_str(),
                response.model_version.as_str()
            ),
            ("req-7", "digits", "1")
        );
        let [probabilities, label] = &response.outputs[..] else {
            panic!("two outputs")
        };
        assert_eq!(
            (probabilities.name.as_str(), probabilities.shape.as_slice()),
            ("probabilities", &[1, 10][..])
        );
        let sum: f32 = probabilities.data.as_f32().unwrap().iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
        assert_eq!(label.data, TensorData::I64(vec![i64::from(data.labels[i])]));
    }
    p.stop().await;
}

#[tokio::test]
async fn answers_a_multi_row_request_row_by_row() {
    let mut p = Pipeline::start(repo_with(&["digits"]), &["digits"]).await;
    let data = held_out();
    let pixels: Vec<f32> = (0..3).flat_map(|i| data.image(i).to_vec()).collect();
    let response = ok(p
        .ask("digits", Some("1"), image_request("three", &pixels, 3))
        .await
        .1);
    assert_eq!(response.outputs[0].shape, vec![3, 10]);
    let expected: Vec<i64> = data.labels[..3].iter().map(|&l| l.into()).collect();
    assert_eq!(response.outputs[1].data, TensorData::I64(expected));
    p.stop().await;
}

#[tokio::test]
async fn batch_results_go_to_the_result_queue_correlated_by_message_id() {
    let p = Pipeline::start(repo_with(&["digits"]), &["digits"]).await;
    let data = held_out();
    let mut results = p
        .transport
        .subscribe(&[queues::results("digits")], 100)
        .await
        .unwrap();
    for i in 0..20 {
        let properties = Properties {
            message_id: Some(format!("batch-{i}")),
            ..Properties::default()
        };
        p.send(
            "digits",
            Lane::Batch,
            image_request(&format!("b{i}"), data.image(i), 1),
            properties,
        )
        .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), results.next())
            .await
            .unwrap()
            .unwrap();
        let i: usize = delivery
            .message
            .properties
            .correlation_id
            .as_deref()
            .unwrap()["batch-".len()..]
            .parse()
            .unwrap();
        let response = ok(decode_reply(&delivery.message.body).unwrap());
        assert_eq!(response.id, format!("b{i}"));
        assert!(seen.insert(i));
        delivery.settle.ack().await.unwrap();
    }
    assert_eq!(
        p.transport.depth(&queues::requests("digits", Lane::Batch)),
        0
    );
    p.stop().await;
}

#[tokio::test]
async fn rejects_bad_input_with_a_clear_error_and_settles_it() {
    let mut p = Pipeline::start(repo_with(&["digits"]), &["digits"]).await;
    let pixels = vec!["1"; 64].join(",");
    let with = |name: &str, shape: &str, datatype: &str, data: &str| {
        format!(
            r#"{{"id":"bad","inputs":[{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":[{data}]}}]}}"#
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
        ("{\"id\":\"bad\",\"inputs\":[".into(), "msg-1", "malformed"),
        (String::new(), "msg-1", "empty"),
        (
            with("pixels", "[1,64]", "FP32", &pixels),
            "bad",
            "unknown input",
        ),
        (
            with("input", "[1,64]", "INT32", &pixels),
            "bad",
            "must be FP32",
        ),
        (
            with("input", "[1,8,8]", "FP32", &pixels),
            "bad",
            "must have shape",
        ),
        (with("input", "[2,64]", "FP32", &pixels), "bad", "elements"),
        // Shapes that claim 10^12 elements, or overflow: refused, never allocated.
        (
            with("input", "[15625000000,64]", "FP32", &pixels),
            "bad",
            "elements",
        ),
        (
            with("input", "[4294967296,4294967296,4294967296]", "FP32", "1"),
            "bad",
            "too large",
        ),
        (
            with(
                "input",
                "[1,64]",
                "FP32",
                &format!("1e40,{}", vec!["1"; 63].join(",")),
            ),
            "bad",
            "finite",
        ),
    ];
    for (body, id, expected) in cases {
        let (properties, reply) = p.ask("digits", None, body.clone()).await;
        let error = err(reply);
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{body}");
        assert_eq!(error.id, id, "{body}");
        assert!(error.error.contains(expected), "{body}: {}", error.error);
        assert_eq!(properties.error_code, Some(ErrorCode::InvalidArgument));
    }
    let huge = format!(
        "{{\"id\":\"big\",\"inputs\":[{}]}}",
        " ".repeat(MAX_REQUEST_BYTES)
    );
    let error = err(p.ask("digits", None, huge).await.1);
    assert_eq!(
        (error.code, error.id.as_str()),
        (ErrorCode::ResourceExhausted, "msg-1")
    );
    let rows = MAX_REQUEST_ROWS + 1;
    let tall = with(
        "input",
        &format!("[{rows},64]"),
        "FP32",
        &vec!["1"; rows * 64].join(","),
    );
    let error = err(p.ask("digits", None, tall).await.1);
    assert_eq!(error.code, ErrorCode::ResourceExhausted);
    assert!(error.error.contains("101 rows"), "{}", error.error);
    // Every bad request was acked: nothing waits, nothing was dead-lettered.
    assert_eq!(
        p.transport
            .depth(&queues::requests("digits", Lane::Realtime)),
        0
    );
    assert_eq!(p.transport.depth(&queues::dead("digits")), 0);
    p.stop().await;
}

#[tokio::test]
async fn unknown_model_version_or_alias_is_not_found() {
    let repo = repo_with(&["digits"]);
    let error = refused(&repo, &["digits", "nosuch"]).await;
    let ServeError::Model { model, error, .. } = error else {
        panic!("{error}")
    };
    assert_eq!(
        (model.as_str(), error.code),
        ("nosuch", ErrorCode::NotFound)
    );
    assert_eq!(error.message, "model nosuch not found");
    let mut p = Pipeline::start(repo, &["digits"]).await;
    let request = image_request("x", &held_out().pixels[..64], 1);
    for version in ["9", "staging"] {
        let error = err(p.ask("digits", Some(version), request.clone()).await.1);
        assert_eq!(
            error.code,
            ErrorCode::NotFound,
            "{version}: {}",
            error.error
        );
        assert_eq!(error.id, "x", "the request's own id");
        assert_eq!(
            error.error,
            format!("model digits has no version or alias {version}")
        );
    }
    let error = err(p.ask("digits", Some("../../etc"), request.clone()).await.1);
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{}", error.error);
    p.stop().await;
}

#[tokio::test]
async fn tampered_weights_stop_the_worker_from_starting_saying_why() {
    let repo = repo_with(&["digits", "tampered"]);
    let weights = repo.path().join("tampered/1/model.bin");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();
    let error = refused(&repo, &["digits", "tampered"]).await.to_string();
    assert!(
        error.starts_with("cannot serve model tampered from "),
        "{error}"
    );
    assert!(error.contains("sha256"), "{error}");
    // Without it, the worker serves.
    let mut p = Pipeline::start(repo, &["digits"]).await;
    ok(p.ask(
        "digits",
        None,
        image_request("t", &held_out().pixels[..64], 1),
    )
    .await
    .1);
    p.stop().await;
}

#[tokio::test]
async fn expired_requests_are_answered_deadline_exceeded_without_compute() {
    let mut p = Pipeline::start(repo_with(&["digits"]), &["digits"]).await;
    let properties = Properties {
        message_id: Some("late".into()),
        reply_to: Some(REPLIES.into()),
        deadline_ms: Some(1),
        ..Properties::default()
    };
    p.send(
        "digits",
        Lane::Realtime,
        image_request("late", &held_out().pixels[..64], 1),
        properties,
    )
    .await;
    let delivery = tokio::time::timeout(Duration::from_secs(30), p.replies.next())
        .await
        .unwrap()
        .unwrap();
    let error = err(decode_reply(&delivery.message.body).unwrap());
    assert_eq!(
        (error.code, error.id.as_str()),
        (ErrorCode::DeadlineExceeded, "late")
    );
    delivery.settle.ack().await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_loses_none() {
    let mut p = Pipeline::start(repo_with(&["digits"]), &["digits"]).await;
    let data = held_out();
    let total = 300;
    for i in 0..total {
        let properties = Properties {
            message_id: Some(i.to_string()),
            reply_to: Some(REPLIES.into()),
            ..Properties::default()
        };
        p.send(
            "digits",
            Lane::Realtime,
            image_request(&i.to_string(), data.image(i % data.len()), 1),
            properties,
        )
        .await;
    }
    // Stop as soon as the first answer is out; the rest is either answered or still queued.
    let first = p.replies.next().await.unwrap();
    first.settle.ack().await.unwrap();
    p.shutdown.cancel();
    p.serving.await.unwrap();
    let mut answered = 1;
    while let Ok(Some(reply)) =
        tokio::time::timeout(Duration::from_millis(200), p.replies.next()).await
    {
        ok(decode_reply(&reply.message.body).unwrap());
        reply.settle.ack().await.unwrap();
        answered += 1;
    }
    let queued = p
        .transport
        .depth(&queues::requests("digits", Lane::Realtime));
    assert_eq!(
        answered + queued,
        total,
        "answered {answered}, still queued {queued}"
    );
}
