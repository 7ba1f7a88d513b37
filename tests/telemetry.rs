//! What Kubernetes and KEDA rely on, tested on a live `ember serve` over a real RabbitMQ: the
//! Prometheus counters move by exactly what the worker did, `/readyz` turns false the moment a
//! drain starts (and nothing taken is lost), and `--exit-when-idle` ends a worker whose queue is
//! empty with status 0. Also reports the cold start: process start → `/readyz` 200.

mod common;

use common::{KillOnDrop, broker, held_out, image_request, repo_with, unique_model};
use ember::client::{Client, InferOptions};
use ember::protocol::{ErrorCode, Lane};
use ember::transport::amqp::AmqpTransport;
use ember::transport::{Message, Properties, Transport, queues};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An `ember serve --transport amqp` process whose telemetry listens on a free port.
struct Served {
    process: KillOnDrop,
    /// `http://127.0.0.1:<port>`.
    telemetry: String,
    logs: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Served {
    fn start(repo: &std::path::Path, model: &str, flags: &[&str]) -> Self {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["serve", "--transport", "amqp", "--model", model])
            .args(["--metrics-addr", "127.0.0.1:0", "--model-repo"])
            .arg(repo)
            .args(flags)
            .env("EMBER_AMQP_URL", common::amqp_url())
            .env("EMBER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (telemetry, logs) = common::follow_logs(&mut child);
        Self {
            process: KillOnDrop(child),
            telemetry,
            logs,
            started,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.telemetry))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Polls `/readyz` until 200; returns the time since the process started.
    async fn ready(&self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return self.started.elapsed();
            }
            assert_eq!(status, 503, "{body}");
            assert!(Instant::now() < deadline, "not ready in time: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> Scrape {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        Scrape(text)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.process.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its status code.
    fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                return status.code().expect("exited, not killed");
            }
            assert!(
                Instant::now() < deadline,
                "still running; logs:\n{}",
                self.logs.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A Prometheus text exposition.
struct Scrape(String);

impl Scrape {
    /// The sum of the samples of `name` whose labels include `labels` (0 if none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
                let pairs: HashMap<&str, &str> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k, v.trim_matches('"')))
                    .collect();
                let matches = metric == name && labels.iter().all(|(k, v)| pairs.get(k) == Some(v));
                matches.then(|| value.parse::<f64>().unwrap())
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.lines().any(|line| line.starts_with(name))
    }
}

/// A fresh model named after `prefix`, its repository, and the broker with its queues declared.
async fn fixture(prefix: &str) -> (String, tempfile::TempDir, Arc<AmqpTransport>) {
    let model = unique_model(prefix);
    let repo = repo_with(&[&model]);
    let transport = Arc::new(broker(|c| c).await);
    transport.declare(&model).await.unwrap();
    (model, repo, transport)
}

/// All `requests` batch requests were answered to the result queue; none is left waiting.
async fn assert_all_answered(transport: &AmqpTransport, model: &str, requests: usize) {
    let results = transport.depth(&queues::results(model)).await.unwrap();
    assert_eq!(results, requests as u32);
    let waiting = transport
        .depth(&queues::requests(model, Lane::Batch))
        .await
        .unwrap();
    assert_eq!(waiting, 0);
}

/// Publishes request `id` (`rows` images, `pixels`) to `model`'s batch queue with `properties`.
async fn publish_batch(
    transport: &impl Transport,
    model: &str,
    id: &str,
    (pixels, rows): (&[f32], usize),
    properties: Properties,
) {
    let message = Message {
        body: image_request(id, pixels, rows).into(),
        properties: Properties {
            message_id: Some(id.to_owned()),
            ..properties
        },
    };
    let queue = queues::requests(model, Lane::Batch);
    transport.publish(&queue, message).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_the_worker_did() {
    let (model, repo, transport) = fixture("tm").await;
    let served = Served::start(repo.path(), &model, &[]);
    let cold_start = served.ready().await;
    eprintln!(
        "cold start (process start to /readyz 200): {:.2} s",
        cold_start.as_secs_f64()
    );
    let (status, body) = served.get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));

    let client = Client::from_arc(transport.clone());
    let data = held_out();
    let options = InferOptions::default();
    const REALTIME_OK: usize = 24;
    for i in 0..REALTIME_OK {
        let body = image_request(&format!("ok-{i}"), data.image(i), 1);
        let reply = client.call(&model, body.into(), &options).await.unwrap();
        assert_eq!(reply.properties.error_code, None);
    }
    const INVALID: usize = 5;
    for i in 0..INVALID {
        let body =
            br#"{"inputs":[{"name":"image","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
        let reply = client
            .call(&model, body.to_vec().into(), &options)
            .await
            .unwrap();
        assert_eq!(
            reply.properties.error_code,
            Some(ErrorCode::InvalidArgument),
            "{i}"
        );
    }
    // Batch lane: 4 requests of 2 rows to the result queue, 3 already past their deadline, then
    // 1 whose reply_to names no queue (dead-lettered).
    let stamped = Properties::default().sent_now();
    for i in 0..4 {
        let pixels = [data.image(i), data.image(i + 1)].concat();
        let (id, image) = (format!("b-{i}"), (pixels.as_slice(), 2));
        publish_batch(transport.as_ref(), &model, &id, image, stamped.clone()).await;
    }
    for i in 0..3 {
        let late = Properties {
            deadline_ms: Some(1),
            ..stamped.clone()
        };
        let id = format!("late-{i}");
        publish_batch(transport.as_ref(), &model, &id, (data.image(i), 1), late).await;
    }
    let answered = Instant::now() + Duration::from_secs(60);
    while transport.depth(&queues::results(&model)).await.unwrap() < 7 {
        assert!(Instant::now() < answered, "batch lane not answered in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Published alone: lapin pins an unroutable return on any publish of a multiple-ack, so
    // with others in flight only the identity check in src/transport/amqp.rs sorts them out.
    let nowhere = Properties {
        reply_to: Some(format!("{model}-nowhere")),
        ..stamped.clone()
    };
    publish_batch(
        transport.as_ref(),
        &model,
        "nowhere",
        (data.image(0), 1),
        nowhere,
    )
    .await;
    // Every batch-lane request is settled once the results and dead-letter queues hold them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while transport.depth(&queues::results(&model)).await.unwrap() < 7
        || transport.depth(&queues::dead(&model)).await.unwrap() < 1
    {
        assert!(Instant::now() < deadline, "batch lane not answered in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let scrape = served.metrics().await;
    let m = model.as_str();
    let requests = |lane, code| {
        scrape.value(
            "ember_requests_total",
            &[("model", m), ("lane", lane), ("code", code)],
        )
    };
    assert_eq!(requests("realtime", "OK"), REALTIME_OK as f64);
    assert_eq!(
        scrape.value(
            "ember_requests_total",
            &[("model", m), ("version", "1"), ("code", "OK")]
        ),
        (REALTIME_OK + 4) as f64,
        "OK answers carry the served version (the dead-lettered one was never answered)"
    );
    assert_eq!(requests("realtime", "INVALID_ARGUMENT"), INVALID as f64);
    assert_eq!(requests("batch", "OK"), 4.0);
    assert_eq!(requests("batch", "DEADLINE_EXCEEDED"), 3.0);
    assert_eq!(
        scrape.value("ember_deadline_drops_total", &[("model", m)]),
        3.0
    );
    assert_eq!(
        scrape.value(
            "ember_deliveries_dead_lettered_total",
            &[("model", m), ("code", "NOT_FOUND")]
        ),
        1.0
    );
    // Computed: 24 + 4×2 + 1 rows in batches; every request timed end to end, once.
    let version = [("model", m), ("version", "1")];
    assert_eq!(
        scrape.value("ember_batch_size_sum", &version),
        (REALTIME_OK + 8 + 1) as f64
    );
    assert_eq!(
        scrape.value("ember_batch_wait_seconds_count", &version),
        (REALTIME_OK + 4 + 1) as f64
    );
    let batches = scrape.value("ember_batch_size_count", &version);
    assert!(batches >= 1.0);
    assert_eq!(
        scrape.value("ember_batch_compute_seconds_count", &version),
        batches
    );
    let taken = (REALTIME_OK + INVALID + 4 + 3 + 1) as f64;
    assert_eq!(
        scrape.value("ember_request_duration_seconds_count", &[("model", m)]),
        taken
    );
    // The client stamps ember-sent-ms; so did this test's batch-lane publishes.
    assert_eq!(
        scrape.value("ember_queue_wait_seconds_count", &[("model", m)]),
        taken
    );
    assert_eq!(
        scrape.value("ember_requests_in_flight", &[("model", m)]),
        0.0
    );
    assert_eq!(
        scrape.value(
            "ember_model_info",
            &[("model", m), ("alias", "production"), ("version", "1")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("ember_model_load_seconds_count", &[("model", m)]),
        1.0
    );
    assert_eq!(
        scrape.value("ember_deliveries_redelivered_total", &[("model", m)]),
        0.0
    );
    // Histograms have millisecond buckets.
    assert!(
        scrape
            .0
            .contains("ember_batch_compute_seconds_bucket{model=\"")
            && scrape.0.contains("le=\"0.001\"")
    );

    // Every metric the Grafana dashboard plots exists.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/monitoring/grafana-dashboard.json"
    ))
    .unwrap();
    let plotted: std::collections::BTreeSet<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ember_"))
        .collect();
    assert!(plotted.len() >= 10, "{plotted:?}");
    for name in plotted {
        assert!(
            scrape.has(name),
            "the dashboard plots {name}, which /metrics lacks"
        );
    }
    drop(served);
    transport.delete(&model).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_while_draining_and_the_drain_answers_everything() {
    let (model, repo, transport) = fixture("tm-drain").await;
    // Requests wait up to 3 s for company: a drain has work to finish for that long.
    let mut served = Served::start(
        repo.path(),
        &model,
        &["--max-batch-delay", "3s", "--max-batch-size", "256"],
    );
    served.ready().await;
    let data = held_out();
    const REQUESTS: usize = 20;
    for i in 0..REQUESTS {
        let id = format!("d-{i}");
        publish_batch(
            transport.as_ref(),
            &model,
            &id,
            (data.image(i), 1),
            Properties::default(),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while served
        .metrics()
        .await
        .value("ember_requests_in_flight", &[("model", &model)])
        < REQUESTS as f64
    {
        assert!(Instant::now() < deadline, "requests not taken in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    served.signal("-TERM");
    // Not ready from the drain's first moment, while the requests taken are still being answered.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = served.get("/readyz").await;
        if status == 503 {
            assert_eq!(body.trim(), "not ready: draining");
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight = served
        .metrics()
        .await
        .value("ember_requests_in_flight", &[("model", &model)]);
    assert!(
        in_flight > 0.0,
        "the drain was over before readiness turned false"
    );
    assert_eq!(served.exit_code(Duration::from_secs(60)), 0);
    assert_all_answered(transport.as_ref(), &model, REQUESTS).await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_answers_the_queue_then_exits_zero() {
    let (model, repo, transport) = fixture("tm-idle").await;
    let data = held_out();
    const REQUESTS: usize = 300;
    for i in 0..REQUESTS {
        let (id, pixels) = (format!("i-{i}"), data.image(i % data.len()));
        publish_batch(
            transport.as_ref(),
            &model,
            &id,
            (pixels, 1),
            Properties::default(),
        )
        .await;
    }
    let mut served = Served::start(repo.path(), &model, &["--exit-when-idle", "1s"]);
    assert_eq!(served.exit_code(Duration::from_secs(120)), 0);
    assert_all_answered(transport.as_ref(), &model, REQUESTS).await;
    let logs = served.logs.lock().unwrap().join("\n");
    assert!(logs.contains("no request for the idle time"), "{logs}");

    // An empty queue: the worker starts, waits the idle time, and exits 0.
    let mut empty = Served::start(repo.path(), &model, &["--exit-when-idle", "500ms"]);
    assert_eq!(empty.exit_code(Duration::from_secs(60)), 0);
    let logs = empty.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("worker ready") && logs.contains("no request for the idle time"),
        "{logs}"
    );
    transport.delete(&model).await.unwrap();
}
