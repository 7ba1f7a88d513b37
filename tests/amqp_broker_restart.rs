//! A RabbitMQ restart (`rabbitmqctl stop_app` / `start_app`) while `ember serve` works: the
//! worker reconnects and resumes; every request is answered. Its own test binary, because it
//! takes the broker away from every other test.

mod common;

use common::{broker, held_out, image_request, repo_with, unique_model};
use ember::protocol::Lane;
use ember::transport::{Message, Properties, Transport, queues};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("rabbitmqctl (the test restarts the local broker)");
    assert!(status.success(), "rabbitmqctl {args:?}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_broker_restart() {
    const REQUESTS: usize = 3_000;
    let model = unique_model("restart");
    let repo = repo_with(&[&model]);
    let transport = broker(|c| c).await;
    transport.declare(&model).await.unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--transport", "amqp", "--model", &model])
        .arg("--model-repo")
        .arg(repo.path())
        .env("EMBER_AMQP_URL", common::amqp_url())
        .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
        .env("EMBER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let batch = queues::requests(&model, Lane::Batch);
    let data = held_out();
    for i in 0..REQUESTS {
        let message = Message {
            body: image_request("r", data.image(i % data.len()), 1).into(),
            properties: Properties {
                message_id: Some(format!("m-{i}")),
                ..Properties::default()
            },
        };
        transport.publish(&batch, message).await.unwrap();
        if i == REQUESTS / 3 {
            // Mid-stream: the broker goes away for a while and comes back.
            rabbitmqctl(&["stop_app"]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup"]);
        }
    }
    let mut results = transport
        .subscribe(&[queues::results(&model)], 1000)
        .await
        .unwrap();
    let mut answered = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while answered.len() < REQUESTS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(delivery)) = tokio::time::timeout(left, results.next()).await else {
            panic!(
                "{} of {REQUESTS} answered after the restart",
                answered.len()
            );
        };
        answered.insert(delivery.message.properties.correlation_id.clone().unwrap());
        delivery.settle.ack().await.unwrap();
    }
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker stayed up through the restart"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    results.stop().await;
    transport.delete(&model).await.unwrap();
}
