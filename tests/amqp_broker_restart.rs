//! A RabbitMQ restart (`rabbitmqctl stop_app` / `start_app`) while `ember serve` works: the
//! worker reconnects and resumes; every request is answered, none dead-lettered. Its own test
//! binary, because it takes the broker away from every other test. `EMBER_CHAOS_REQUESTS` sets
//! the load, as in `tests/chaos.rs`; the figures it prints are in docs/reliability.md.

mod common;

use common::load::{Answers, publish_at, spawn_worker};
use common::{broker, repo_with, unique_model};
use ember::transport::{Transport, queues};
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
    let requests = std::env::var("EMBER_CHAOS_REQUESTS").map_or(3_000, |n| n.parse().unwrap());
    let model = unique_model("restart");
    let repo = repo_with(&[&model]);
    let transport = broker(|c| c).await;
    transport.declare(&model).await.unwrap();
    let mut worker = spawn_worker(repo.path(), &model);
    let mut answers = Answers::open(&transport, &model).await;
    let started = Instant::now();
    publish_at(&transport, &model, 0..requests / 2, None).await;
    answers.until(requests / 3, Duration::from_secs(120)).await;
    // Mid-stream: the broker goes away for a while and comes back.
    let stopped = Instant::now();
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let down = stopped.elapsed();
    publish_at(&transport, &model, requests / 2..requests, None).await;
    answers.until(requests, Duration::from_secs(300)).await;
    let dead = transport.depth(&queues::dead(&model)).await.unwrap();
    println!(
        "chaos broker-restart: sent {requests} answered {} duplicated {} dead-lettered {dead} \
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
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker stayed up through the restart"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    answers.results.stop().await;
    transport.delete(&model).await.unwrap();
}
