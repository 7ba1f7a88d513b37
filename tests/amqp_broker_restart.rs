//! The broker goes away under load while `ember serve` works, and comes back: the worker
//! reconnects and resumes; every request is answered, none dead-lettered. Three outages:
//! `rabbitmqctl stop_app` / `start_app` on the shared broker, and a full restart and a SIGKILL
//! crash of a private node (`common::rabbit_node`). Its own test binary, because the first
//! takes the broker away from every other test. `EMBER_CHAOS_REQUESTS` sets the load, as in
//! `tests/chaos.rs`; the figures it prints are in docs/reliability.md.

mod common;

use common::load::{Answers, publish_at, spawn_worker_via};
use common::rabbit_node::RabbitNode;
use common::{amqp_url, repo_with, unique_model};
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use ember::transport::{Transport, queues};
use ember::worker::WorkerConfig;
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
async fn worker_survives_stop_app_and_start_app() {
    survive("broker-restart", &amqp_url(), || {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_full_broker_restart() {
    let node = RabbitNode::plain();
    survive("broker-service-restart", &node.url(), || {
        node.stop();
        node.boot();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_broker_crash() {
    let node = RabbitNode::plain();
    survive("broker-kill-9", &node.url(), || {
        node.kill();
        node.boot();
    })
    .await;
}

/// Half the requests, `outage` once a third is answered, then the other half; all must be
/// answered, none dead-lettered, and the worker must have stayed up.
async fn survive(scenario: &str, url: &str, outage: impl FnOnce()) {
    let requests = std::env::var("EMBER_CHAOS_REQUESTS").map_or(3_000, |n| n.parse().unwrap());
    let model = unique_model("restart");
    let repo = repo_with(&[&model]);
    let transport = AmqpTransport::connect(AmqpConfig::new(url)).await.unwrap();
    transport.declare(&model).await.unwrap();
    // A quorum queue declared under a second before a crash can come back with no leader
    // (RabbitMQ 3.10, docs/reliability.md); queues are declared long before load in practice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut worker = spawn_worker_via(repo.path(), &model, url);
    let mut answers = Answers::open(&transport, &model).await;
    let started = Instant::now();
    publish_at(&transport, &model, 0..requests / 2, None).await;
    answers.until(requests / 3, Duration::from_secs(120)).await;
    // Mid-stream: the broker goes away for a while and comes back.
    let stopped = Instant::now();
    tokio::task::block_in_place(outage);
    let down = stopped.elapsed();
    publish_at(&transport, &model, requests / 2..requests, None).await;
    answers.until(requests, Duration::from_secs(300)).await;
    let dead = transport.depth(&queues::dead(&model)).await.unwrap();
    println!(
        "chaos {scenario}: sent {requests} answered {} duplicated {} dead-lettered {dead} \
         lost {} ({} answers redelivered to the test's own consumer) broker down {:.1} s, \
         longest silence {:.1} s, all answered in {:.1} s",
        answers.seen.len(),
        answers.duplicates(),
        requests - answers.seen.len(),
        answers.redelivered,
        down.as_secs_f64(),
        answers.longest_silence.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(dead, 0, "nothing dead-lettered");
    // Only what the worker held unacked when its connection died is answered again.
    let window = 2 * WorkerConfig::for_batch_size(32).prefetch;
    assert!(
        answers.duplicates() <= window,
        "{} duplicates",
        answers.duplicates()
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker stayed up through the outage"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    answers.results.stop().await;
    transport.delete(&model).await.unwrap();
}
