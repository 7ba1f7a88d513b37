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
