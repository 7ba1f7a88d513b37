//! `ember train` produces a real, servable model version.

use ember::store::{ModelName, Repository, Version, sha256_hex};
use ember::train::{TrainOptions, train};

#[tokio::test]
async fn training_publishes_a_verified_version_that_learned() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path().to_str().unwrap()).unwrap();
    let name = ModelName::parse("digits").unwrap();
    let options = TrainOptions {
        epochs: Some(3),
        ..TrainOptions::default()
    };
    let first = train(&repo, "digits", &name, &options).await.unwrap();
    assert_eq!(first.version.as_str(), "1");
    let accuracy = first.metrics["test_accuracy"];
    assert!(
        accuracy >= 0.85,
        "held-out accuracy after 3 epochs: {accuracy}"
    );
    let record = first.training.as_ref().unwrap();
    assert_eq!(record.train_samples + record.test_samples, 1797);
    // Built from this checkout (CI, `cargo test`): the commit is recorded.
    let commit = record
        .git_commit
        .as_deref()
        .expect("built from a git checkout");
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );

    let artifact = repo.load(&name, &first.version).await.expect("verifies");
    assert_eq!(sha256_hex(&artifact.weights), first.sha256);
    let production = Version::parse("production").unwrap();
    assert_eq!(
        repo.resolve(&name, &production).await.unwrap(),
        first.version
    );

    // A second version is published but not promoted unless asked.
    let second = train(
        &repo,
        "digits",
        &name,
        &TrainOptions {
            epochs: Some(1),
            ..options
        },
    )
    .await
    .unwrap();
    assert_eq!(second.version.as_str(), "2");
    assert_eq!(
        repo.resolve(&name, &production).await.unwrap(),
        first.version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwru_learns_the_real_fault_classes_of_later_windows_and_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path().to_str().unwrap()).unwrap();
    let name = ModelName::parse("cwru").unwrap();
    let options = TrainOptions {
        epochs: Some(4),
        ..TrainOptions::default()
    };
    let manifest = train(&repo, "cwru", &name, &options).await.unwrap();
    // Held-out windows come from the last quarter of each real recording, never trained on.
    let metrics = &manifest.metrics;
    for figure in [
        "test_accuracy",
        "test_balanced_accuracy",
        "test_accuracy_normal",
    ] {
        assert!(
            metrics[figure] >= 0.97,
            "{figure} after 4 epochs: {metrics:?}"
        );
    }
    let windows: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("test_confusion_"))
        .map(|(_, v)| v)
        .sum();
    let record = manifest.training.as_ref().unwrap();
    assert_eq!(windows, record.test_samples as f64);
    assert!(
        record.dataset.starts_with("13 real CWRU"),
        "{}",
        record.dataset
    );
    assert_eq!(manifest.inputs[0].shape, [-1, 2048]);
    assert_eq!(
        manifest.labels,
        ["normal", "inner_race", "ball", "outer_race"]
    );

    // The demo serves the held-out windows through the worker pipeline and checks each label.
    let report = ember::demo::run(&ember::demo::DemoOptions {
        requests: record.test_samples,
        realtime_every: 4,
        batch: ember::batcher::BatchConfig::default(),
        repo,
        model: name,
        device: ember::runtime::Device::Cpu,
    })
    .await
    .unwrap();
    assert_eq!((report.ok, report.errors), (record.test_samples, 0));
    // The same windows as the training's held-out figure, so the same accuracy.
    let accuracy = metrics["test_accuracy"];
    assert!(
        (report.accuracy - accuracy).abs() < 1e-9,
        "{} vs {accuracy}",
        report.accuracy
    );
}

/// Each run in its own process, as `ember train` runs: Burn's CPU backend draws from one
/// random generator per process, which concurrent tests in this process would share.
#[test]
fn the_same_seed_trains_the_same_weights() {
    let sha256 = |seed: &str| {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["train", "ai4i", "--epochs", "2", "--seed", seed, "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let manifest: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        manifest["sha256"].as_str().unwrap().to_owned()
    };
    let first = sha256("11");
    assert_eq!(first, sha256("11"), "same seed, same weights");
    assert_ne!(first, sha256("12"), "another seed, other weights");
}
