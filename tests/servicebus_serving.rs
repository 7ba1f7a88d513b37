//! `ember serve --transport servicebus` processes against the Service Bus REST **test double**:
//! `ember send` / `ember infer` through it, a worker killed with -9 (its locks expire and a second
//! worker answers the rest), and SIGTERM (drains, exits 0, leaves the rest queued). Nothing lost.

mod common;

use common::servicebus::{self, ServiceBusDouble};
use common::{KillOnDrop, held_out, image_request, output_text, repo_with, unique_model};
use ember::protocol::Lane;
use ember::transport::servicebus::ServiceBusTransport;
use ember::transport::{Message, Properties, Transport, queues};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Locks of the queues the tests create: short, so a killed worker's requests come back soon.
const LOCK: &str = "5s";

fn ember(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args(args)
        .envs(ServiceBusDouble::shared().env())
        .env("EMBER_SERVICEBUS_LOCK_DURATION", LOCK)
        .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
        .env("EMBER_LOG", "warn");
    command
}

fn serve(repo: &Path, model: &str) -> KillOnDrop {
    let repo = repo.to_str().unwrap();
    let child = ember(&["serve", "--model", model, "--model-repo", repo])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn transport() -> ServiceBusTransport {
    let mut config = servicebus::config(ServiceBusDouble::shared());
    config.lock_duration = Duration::from_secs(5);
    ServiceBusTransport::new(config)
}

/// A model with its queues declared and a repository serving it.
async fn model(prefix: &str) -> (String, tempfile::TempDir, ServiceBusTransport) {
    let model = unique_model(prefix);
    let repo = repo_with(&[&model]);
    let t = transport();
    t.declare(&model).await.unwrap();
    (model, repo, t)
}

/// Sends `n` one-image requests to the batch queue (answers to the results queue).
async fn send_requests(t: &ServiceBusTransport, model: &str, n: usize) {
    let digits = held_out();
    let queue = queues::requests(model, Lane::Batch);
    for i in 0..n {
        let id = format!("r{i}");
        let message = Message {
            body: image_request(&id, digits.image(i % digits.len()), 1).into(),
            properties: Properties {
                message_id: Some(id),
                model: Some(model.into()),
                lane: Some(Lane::Batch),
                ..Properties::default()
            },
        };
        t.publish(&queue, message).await.unwrap();
    }
}

/// Answers on the results queue until `until` says stop or `within` passes: distinct ids, and
/// how many came twice.
async fn answers(
    t: &ServiceBusTransport,
    model: &str,
    within: Duration,
    mut until: impl FnMut(&HashSet<String>) -> bool,
) -> (HashSet<String>, usize) {
    let mut sub = t.subscribe(&[queues::results(model)], 64).await.unwrap();
    let (mut ids, mut duplicates) = (HashSet::new(), 0);
    let deadline = Instant::now() + within;
    while !until(&ids) && Instant::now() < deadline {
        let Ok(Some(answer)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await
        else {
            continue;
        };
        assert!(
            answer.message.properties.error_code.is_none(),
            "{:?}",
            String::from_utf8_lossy(&answer.message.body)
        );
        let id = answer.message.properties.correlation_id.clone().unwrap();
        if !ids.insert(id) {
            duplicates += 1;
        }
        answer.settle.ack().await.unwrap();
    }
    sub.stop().await;
    (ids, duplicates)
}

#[tokio::test]
async fn send_and_infer_reach_a_worker_through_service_bus() {
    let (model, repo, t) = model("sb-cli").await;
    let _worker = serve(repo.path(), &model);
    let dir = tempfile::tempdir().unwrap();
    let digits = held_out();
    let request = dir.path().join("request.json");
    // Binary outputs asked for: Service Bus carries text, so the answer is JSON.
    let mut asking: serde_json::Value =
        serde_json::from_slice(&image_request("one", digits.image(0), 1)).unwrap();
    asking["parameters"] = serde_json::json!({"binary_data_output": true});
    std::fs::write(&request, asking.to_string()).unwrap();
    let infer = ember(&["infer", "--model", &model, "--timeout", "60s", "--input"])
        .arg(&request)
        .output()
        .unwrap();
    assert!(infer.status.success(), "{}", output_text(&infer));
    let reply: serde_json::Value = serde_json::from_slice(&infer.stdout).unwrap();
    assert_eq!(reply["id"], "one", "{reply}");
    assert_eq!(
        reply["outputs"][0]["shape"],
        serde_json::json!([1, 10]),
        "{reply}"
    );
    assert_eq!(reply["outputs"][1]["data"][0], digits.labels[0], "{reply}");

    let lines: Vec<String> = (0..20)
        .map(|i| String::from_utf8(image_request(&format!("s{i}"), digits.image(i), 1)).unwrap())
        .collect();
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    // Service Bus carries text: binary tensor data is refused before anything is sent.
    let binary = ember(&["send", "--binary", "--model", &model, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!binary.status.success());
    assert!(
        output_text(&binary).contains("carries text bodies only"),
        "{}",
        output_text(&binary)
    );
    let send = ember(&["send", "--model", &model, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(send.status.success(), "{}", output_text(&send));
    let (ids, _) = answers(&t, &model, Duration::from_secs(60), |ids| ids.len() == 20).await;
    let expected: HashSet<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn kill_9_loses_nothing_the_locks_expire_and_another_worker_answers() {
    const REQUESTS: usize = 300;
    let (model, repo, t) = model("sb-kill").await;
    send_requests(&t, &model, REQUESTS).await;
    let mut first = serve(repo.path(), &model);
    let (before, _) = answers(&t, &model, Duration::from_secs(60), |ids| ids.len() >= 30).await;
    first.0.kill().unwrap(); // SIGKILL: its locked requests wait for their locks to expire
    first.0.wait().unwrap();
    let _second = serve(repo.path(), &model);
    let (after, duplicates) = answers(&t, &model, Duration::from_secs(90), |ids| {
        before.len() + ids.len() >= REQUESTS
    })
    .await;
    let all: HashSet<&String> = before.iter().chain(after.iter()).collect();
    assert_eq!(
        all.len(),
        REQUESTS,
        "answered {} of {REQUESTS} ({} before the kill, {duplicates} duplicates after)",
        all.len(),
        before.len()
    );
    assert_eq!(
        ServiceBusDouble::shared().depth(&queues::requests(&model, Lane::Batch)),
        0
    );
}

#[tokio::test]
async fn sigterm_drains_and_leaves_the_rest_queued() {
    const REQUESTS: usize = 300;
    let (model, repo, t) = model("sb-term").await;
    send_requests(&t, &model, REQUESTS).await;
    let mut worker = serve(repo.path(), &model);
    let (answered, _) = answers(&t, &model, Duration::from_secs(60), |ids| ids.len() >= 20).await;
    common::sigterm(&worker.0);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    // What it answered while draining, then what is left: every request exactly once, and
    // nothing left locked (the rest is handed out at once).
    let (drained, _) = answers(&t, &model, Duration::from_secs(3), |_| false).await;
    let queue = queues::requests(&model, Lane::Batch);
    let mut rest = t
        .subscribe(std::slice::from_ref(&queue), REQUESTS)
        .await
        .unwrap();
    let mut left = HashSet::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(3), rest.next()).await {
        left.insert(d.message.properties.message_id.clone().unwrap());
        d.settle.ack().await.unwrap();
    }
    let all: HashSet<&String> = answered.iter().chain(&drained).chain(&left).collect();
    assert_eq!(
        all.len(),
        REQUESTS,
        "{} answered before SIGTERM, {} while draining, {} left queued",
        answered.len(),
        drained.len(),
        left.len()
    );
}

#[tokio::test]
async fn missing_or_wrong_credentials_fail_clearly_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("request.json");
    std::fs::write(&input, image_request("x", held_out().image(0), 1)).unwrap();
    let send = |configure: &dyn Fn(&mut Command)| {
        let mut command = ember(&["send", "--model", "digits", "--input"]);
        command.arg(&input);
        configure(&mut command);
        command.output().unwrap()
    };
    let missing = send(&|c| {
        c.env_remove("EMBER_SERVICEBUS_SAS_KEY");
    });
    assert!(!missing.status.success());
    let text = output_text(&missing);
    assert!(
        text.contains("EMBER_SERVICEBUS_CONNECTION_STRING"),
        "{text}"
    );

    let wrong_key = "d3Jvbmcta2V5LXRoYXQtbXVzdC1ub3QtbGVhaw==";
    let refused = send(&|c| {
        c.env("EMBER_SERVICEBUS_SAS_KEY", wrong_key);
    });
    assert!(!refused.status.success());
    let text = output_text(&refused);
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains(wrong_key), "{text}");
}
