//! Chaos under load, against the real broker: `ember serve` workers killed with SIGKILL every
//! few seconds while three serve; faults on the network between a worker and the broker
//! (latency, resets, a black hole); the model storage (Azurite) gone while a new version is
//! rolled out; every worker sent SIGTERM at peak (scale-in). In each, every
//! request is answered and none dead-lettered; only what a worker held unacked may be answered
//! twice. Each prints its figures (docs/reliability.md); `EMBER_CHAOS_REQUESTS` sets
//! the load (default: a short run for CI).

mod common;

use common::load::{Answers, publish_at, publish_many, spawn_worker, spawn_worker_via};
use common::proxy::FaultProxy;
use common::{AZURITE_KEY, BlobRepo, azurite_via, broker, digits_weights, local_version};
use common::{repo_with, unique_model};
use ember::protocol::Lane;
use ember::store::Version;
use ember::transport::amqp::AmqpTransport;
use ember::transport::{Transport, queues};
use ember::worker::WorkerConfig;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a paced scenario's load lasts: long enough for its faults to land mid-stream.
const PACED_OVER: Duration = Duration::from_secs(20);

/// Requests per scenario.
fn requests() -> usize {
    std::env::var("EMBER_CHAOS_REQUESTS").map_or(3_000, |n| n.parse().expect("a number"))
}

/// What one `ember serve` worker may hold unacked (both of its queues' prefetch windows): all
/// that a SIGKILL can make the broker deliver again.
fn unacked_window() -> usize {
    2 * WorkerConfig::for_batch_size(32).prefetch
}

/// A scenario's model, queues and answers.
struct Scenario {
    name: &'static str,
    model: String,
    repo: tempfile::TempDir,
    transport: AmqpTransport,
    answers: Answers,
    requests: usize,
    started: Instant,
}

impl Scenario {
    async fn start(name: &'static str) -> Self {
        let model = unique_model(name);
        let repo = repo_with(&[&model]);
        let transport = broker(|c| c).await;
        transport.declare(&model).await.unwrap();
        let answers = Answers::open(&transport, &model).await;
        Self {
            name,
            model,
            repo,
            transport,
            answers,
            requests: requests(),
            started: Instant::now(),
        }
    }

    /// Publishes every request as fast as the broker confirms.
    async fn publish(&mut self) {
        self.started = Instant::now();
        publish_many(&self.transport, &self.model, self.requests).await;
    }

    /// Publishes every request at a steady rate, over `PACED_OVER`, while the test goes on.
    fn publish_paced(&mut self) -> tokio::task::JoinHandle<()> {
        self.started = Instant::now();
        let (transport, model, requests) =
            (self.transport.clone(), self.model.clone(), self.requests);
        let rate = requests as f64 / PACED_OVER.as_secs_f64();
        tokio::spawn(async move { publish_at(&transport, &model, 0..requests, Some(rate)).await })
    }

    fn worker(&self) -> Child {
        spawn_worker(self.repo.path(), &self.model)
    }

    async fn dead_lettered(&self) -> u32 {
        let dead = queues::dead(&self.model);
        self.transport.depth(&dead).await.unwrap()
    }

    /// Waits for every answer, asserts none lost or dead-lettered, prints the figures and
    /// returns the duplicates.
    async fn finish(mut self, workers: Vec<Child>) -> usize {
        self.answers
            .until(self.requests, Duration::from_secs(600))
            .await;
        let elapsed = self.started.elapsed();
        let dead = self.dead_lettered().await;
        let duplicates = self.answers.duplicates();
        println!(
            "chaos {}: sent {} answered {} duplicated {duplicates} dead-lettered {dead} lost {} \
             longest silence {:.1} s, all answered in {:.1} s",
            self.name,
            self.requests,
            self.answers.seen.len(),
            self.requests - self.answers.seen.len(),
            self.answers.longest_silence.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        assert_eq!(dead, 0, "nothing dead-lettered");
        for mut worker in workers {
            let _ = worker.kill();
            let _ = worker.wait();
        }
        self.answers.results.stop().await;
        self.transport.delete(&self.model).await.unwrap();
        duplicates
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_every_few_seconds_lose_nothing() {
    let mut scenario = Scenario::start("chaos-kill").await;
    let mut workers: Vec<Child> = (0..3).map(|_| scenario.worker()).collect();
    let publishing = scenario.publish_paced();
    let mut kills = 0;
    while scenario.answers.seen.len() < scenario.requests {
        scenario
            .answers
            .during(scenario.requests, Duration::from_secs(2))
            .await;
        if scenario.answers.seen.len() == scenario.requests {
            break;
        }
        // The oldest worker dies without warning; a new one takes its place.
        let mut victim = workers.remove(0);
        victim.kill().unwrap();
        victim.wait().unwrap();
        kills += 1;
        workers.push(scenario.worker());
        assert!(kills < 300, "the stream never finished");
    }
    publishing.await.unwrap();
    println!("chaos chaos-kill: {kills} workers killed with SIGKILL, one every 2 s");
    let duplicates = scenario.finish(workers).await;
    assert!(
        duplicates <= kills * unacked_window(),
        "{duplicates} duplicates after {kills} kills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_faults_between_worker_and_broker_lose_nothing() {
    let mut scenario = Scenario::start("chaos-net").await;
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    // A 2 s heartbeat (Ember's default is 10 s) keeps the black hole's cost short here.
    let url = common::amqp_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port));
    let url = format!("{url}?heartbeat=2");
    let worker = spawn_worker_via(scenario.repo.path(), &scenario.model, &url);
    let publishing = scenario.publish_paced();
    let phase = |answers: &Answers| answers.seen.len();
    let mut faults = Vec::new();
    // Latency on every packet, resets of every connection, then a black hole.
    proxy.set_latency(Duration::from_millis(20));
    scenario
        .answers
        .during(scenario.requests, Duration::from_secs(3))
        .await;
    proxy.set_latency(Duration::ZERO);
    faults.push(("20 ms latency", phase(&scenario.answers)));
    for _ in 0..3 {
        proxy.down();
        proxy.up();
        scenario
            .answers
            .during(scenario.requests, Duration::from_secs(2))
            .await;
    }
    faults.push(("3 resets", phase(&scenario.answers)));
    proxy.black_hole(true);
    scenario
        .answers
        .during(scenario.requests, Duration::from_secs(8))
        .await;
    proxy.black_hole(false);
    faults.push(("8 s black hole", phase(&scenario.answers)));
    publishing.await.unwrap();
    println!("chaos chaos-net: answered after each fault: {faults:?}");
    assert!(proxy.connections() > 1, "the worker reconnected");
    let duplicates = scenario.finish(vec![worker]).await;
    // Each broken connection may hand back what the worker held unacked.
    assert!(
        duplicates <= 4 * unacked_window(),
        "{duplicates} duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_gone_during_a_rollout_keeps_the_old_version_serving() {
    let mut scenario = Scenario::start("chaos-rollout").await;
    let blob = BlobRepo::new("chaos-rollout").await;
    let repo = blob.open();
    let local = tempfile::tempdir().unwrap();
    for v in ["1", "2"] {
        let dir = local_version(local.path(), &scenario.model, v, &digits_weights());
        repo.push(&dir).await.unwrap();
    }
    let model = scenario.model.parse().unwrap();
    let version = |v: &str| Version::parse(v).unwrap();
    repo.promote(&model, &version("1"), &version("production"))
        .await
        .unwrap();
    // The workers reach the storage through a proxy that can take it away: down, it drops
    // every connection and refuses new ones, as a stopped Azurite would.
    let proxy = FaultProxy::start("127.0.0.1:10000").await;
    let storage = azurite_via(&format!("http://127.0.0.1:{}", proxy.port), AZURITE_KEY);
    let caches: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let workers: Vec<Child> = caches
        .iter()
        .map(|cache| {
            let args = ["serve", "--transport", "amqp", "--reload-interval", "200ms"];
            blob.ember(&args)
                .args(["--model", &scenario.model, "--model-repo", &blob.url])
                .env("AZURE_STORAGE_CONNECTION_STRING", &storage)
                .env("EMBER_CACHE_DIR", cache.path())
                .env("EMBER_LOG", "error") // not each retry while the storage is gone
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let publishing = scenario.publish_paced();
    let fifth = scenario.requests / 5;
    scenario
        .answers
        .until(fifth, Duration::from_secs(120))
        .await;
    // The storage goes away; version 2 is promoted meanwhile (straight to Azurite).
    proxy.down();
    let down = Instant::now();
    repo.promote(&model, &version("2"), &version("production"))
        .await
        .unwrap();
    scenario
        .answers
        .during(scenario.requests, Duration::from_secs(5))
        .await;
    proxy.up();
    let up = Instant::now();
    scenario
        .answers
        .until(scenario.requests, Duration::from_secs(600))
        .await;
    publishing.await.unwrap();

    let versions = &scenario.answers.versions;
    let while_down: Vec<&str> = versions
        .iter()
        .filter(|(at, _)| (down..up).contains(at))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        !while_down.is_empty(),
        "requests were answered while the storage was gone"
    );
    assert!(
        while_down.iter().all(|v| *v == "1"),
        "the old version answered while the new one could not be fetched"
    );
    let first_v2 = versions
        .iter()
        .find(|(_, v)| v == "2")
        .expect("version 2 served");
    let last_v1 = versions.iter().rev().find(|(_, v)| v == "1").unwrap();
    assert!(first_v2.0 >= up, "version 2 came only with the storage");
    assert_eq!(versions.last().unwrap().1, "2", "every worker switched");
    println!(
        "chaos chaos-rollout: storage gone {:.1} s, {} answers by version 1 meanwhile; \
         first answer by version 2 {:.1} s after the storage came back, last by version 1 \
         {:.1} s after; {} by version 1, {} by version 2",
        (up - down).as_secs_f64(),
        while_down.len(),
        (first_v2.0 - up).as_secs_f64(),
        last_v1.0.saturating_duration_since(up).as_secs_f64(),
        versions.iter().filter(|(_, v)| v == "1").count(),
        versions.iter().filter(|(_, v)| v == "2").count(),
    );
    let duplicates = scenario.finish(workers).await;
    assert_eq!(duplicates, 0, "a rollout answers nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_sent_sigterm_at_peak_loses_nothing() {
    let mut scenario = Scenario::start("chaos-term").await;
    let workers: Vec<Child> = (0..3).map(|_| scenario.worker()).collect();
    scenario.publish().await;
    let third = scenario.requests / 3;
    scenario
        .answers
        .until(third, Duration::from_secs(300))
        .await;
    // Scale-in at peak: every worker told to stop at once.
    let signalled = Instant::now();
    for worker in &workers {
        common::sigterm(worker);
    }
    for mut worker in workers {
        let status = worker.wait().unwrap();
        assert!(status.success(), "a drained worker exits 0, not {status}");
    }
    let drained_in = signalled.elapsed();
    // Everything a worker took was answered: the rest waits in the queue, unanswered (the
    // broker may take a moment to count what closed channels handed back).
    let batch = queues::requests(&scenario.model, Lane::Batch);
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let period = Duration::from_millis(200);
        scenario.answers.during(scenario.requests, period).await;
        let waiting = scenario.transport.depth(&batch).await.unwrap() as usize;
        if scenario.answers.seen.len() + waiting >= scenario.requests || Instant::now() > deadline {
            break waiting;
        }
    };
    // Answered and queued again: acked after the consumer's cancel, yet handed back by the
    // broker (quorum queues, docs/reliability.md); it is answered twice, never lost.
    let handed_back = (scenario.answers.seen.len() + waiting).saturating_sub(scenario.requests);
    assert!(
        scenario.answers.seen.len() + waiting >= scenario.requests,
        "a request is neither answered nor queued"
    );
    println!(
        "chaos chaos-term: 3 workers drained in {:.1} s; {} answered, {waiting} left queued, \
         {handed_back} of them answered already",
        drained_in.as_secs_f64(),
        scenario.answers.seen.len()
    );
    let replacement = scenario.worker();
    let duplicates = scenario.finish(vec![replacement]).await;
    assert!(
        duplicates <= 3 * unacked_window(),
        "{duplicates} duplicates after a graceful drain"
    );
}
