//! The shipped predictive-maintenance models on their real held-out data, served through a real
//! RabbitMQ to a third-party producer (Python pika): every answer carries the label in-process
//! inference gives the same input.

mod common;

use common::precision::shipped;
use common::{broker, unique_model};
use ember::batcher::BatchConfig;
use ember::models::Precision;
use ember::protocol::{TensorData, encode_request};
use ember::registry::Registry;
use ember::runtime::Device;
use ember::store::{ModelName, Repository, Version};
use ember::transport::Transport;
use ember::worker::{Worker, WorkerConfig};
use std::process::Command;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Serves shipped `model`'s production version under a fresh name, sends its held-out examples
/// with pika, and compares each answer's `output` with in-process inference on the same rows.
async fn pika_answers_match_in_process_inference(model: &str) {
    let artifact = shipped(model).await;
    let examples = ember::train::held_out_examples(&artifact.manifest).unwrap();
    let output = examples[0].output;
    let at = artifact
        .manifest
        .outputs
        .iter()
        .position(|o| o.name == output)
        .unwrap();

    // In process: the examples as one batch, on the CPU, in FP32.
    let batch = common::precision::held_out(&artifact);
    let local = common::precision::outputs(&artifact, Device::Cpu, Precision::Fp32, &batch);
    let local: Vec<serde_json::Value> = match &local[at] {
        TensorData::I64(labels) => labels.iter().map(|&l| l.into()).collect(),
        TensorData::Bool(flags) => flags.iter().map(|&f| f.into()).collect(),
        other => panic!("{model}: {output} is {other:?}"),
    };
    let expected: Vec<serde_json::Value> = examples
        .iter()
        .map(|e| match &e.expected {
            TensorData::I64(l) => l[0].into(),
            TensorData::Bool(f) => f[0].into(),
            other => panic!("{other:?}"),
        })
        .collect();

    // Served: a copy of the production version under a name no other test uses.
    let name = unique_model(&format!("real-{model}"));
    let repo = tempfile::tempdir().unwrap();
    let copy = Repository::open(repo.path().to_str().unwrap()).unwrap();
    let mut manifest = artifact.manifest.clone();
    manifest.name = ModelName::parse(&name).unwrap();
    copy.publish(&manifest, artifact.weights.clone(), &artifact.assets)
        .await
        .unwrap();
    let production = Version::parse("production").unwrap();
    copy.set_alias(&manifest.name, &production, &manifest.version)
        .await
        .unwrap();
    let transport = broker(|c| c).await;
    transport.declare(&name).await.unwrap();
    let registry = Arc::new(Registry::new(copy, BatchConfig::default()));
    let worker = Worker::new(
        Arc::new(transport.clone()),
        registry,
        WorkerConfig::for_batch_size(32),
    );
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let (shutdown, models) = (shutdown.clone(), vec![name.parse().unwrap()]);
        async move { worker.run(&models, shutdown).await.unwrap() }
    });

    let mut requests = Vec::new();
    for (i, example) in examples.iter().enumerate() {
        requests.extend(encode_request(&format!("{model}-{i}"), &example.inputs));
        requests.push(b'\n');
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pika_labels.py");
    let mut client = Command::new("python3");
    client
        .args([script, &common::amqp_url(), &name, output])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let answered = tokio::task::spawn_blocking(move || {
        let mut child = client
            .spawn()
            .expect("python3 (with pika: bash .ci/run installs it)");
        // A client that exits early says why on stderr, shown below.
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), &requests);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    let answers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&answered.stdout).unwrap();
    assert_eq!(
        answers.len(),
        examples.len(),
        "{model}: every request answered"
    );
    let mut right = 0;
    for (i, (local, expected)) in local.iter().zip(&expected).enumerate() {
        let served = &answers[&format!("{model}-{i}")];
        assert_eq!(served, local, "{model} example {i}: served vs in process");
        right += usize::from(served == expected);
    }
    let accuracy = right as f64 / examples.len() as f64;
    println!(
        "{model}: {} held-out examples through pika, {accuracy:.4} right",
        examples.len()
    );
    // The held-out figure training recorded, on the same examples.
    let recorded = artifact.manifest.metrics["test_accuracy"];
    assert!(
        (accuracy - recorded).abs() < 1e-9,
        "{model}: {accuracy} vs {recorded}"
    );
    assert!(accuracy >= 0.97, "{model}: {accuracy}");

    shutdown.cancel();
    serving.await.unwrap();
    transport.delete(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bearing_windows_sent_with_pika_get_the_in_process_labels() {
    pika_answers_match_in_process_inference("cwru").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_ai4i_processes_sent_with_pika_get_the_in_process_decisions() {
    pika_answers_match_in_process_inference("ai4i").await;
}
