//! Gated promotion: `ember models promote --if-better METRIC` moves the alias only for a
//! candidate that beats the current version on that metric, else exits 3 and changes nothing.

mod common;

use ember::store::{Manifest, MetricGate, ModelName, Promotion, Repository, Version, sha256_hex};
use std::process::Command;

fn version(v: &str) -> Version {
    Version::parse(v).unwrap()
}

/// A repository with `model` versions 1.. scored `accuracies` (test_accuracy) and test_loss
/// 1 − accuracy, version 1 in production.
async fn scored_repo(model: &str, accuracies: &[f64]) -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path().to_str().unwrap()).unwrap();
    let weights = common::digits_weights();
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/1/manifest.json");
    let mut manifest: Manifest = serde_json::from_slice(&std::fs::read(shipped).unwrap()).unwrap();
    manifest.name = ModelName::parse(model).unwrap();
    manifest.sha256 = sha256_hex(&weights);
    for (i, accuracy) in accuracies.iter().enumerate() {
        manifest.version = version(&(i + 1).to_string());
        manifest.metrics = [
            ("test_accuracy".to_owned(), *accuracy),
            ("test_loss".to_owned(), 1.0 - accuracy),
        ]
        .into();
        repo.publish(&manifest, weights.clone().into(), &Default::default())
            .await
            .unwrap();
    }
    repo.promote(&manifest.name, &version("1"), &version("production"))
        .await
        .unwrap();
    (dir, repo)
}

#[tokio::test]
async fn only_a_better_candidate_is_promoted() {
    let (_dir, repo) = scored_repo("gated", &[0.90, 0.85, 0.95, 0.95]).await;
    let model = ModelName::parse("gated").unwrap();
    let production = version("production");
    let accuracy = MetricGate::parse("test_accuracy").unwrap();
    let loss = MetricGate::parse("test_loss").unwrap();
    assert!(loss.lower_is_better && !accuracy.lower_is_better);

    let worse = repo
        .promote_if_better(&model, &version("2"), &production, &accuracy)
        .await
        .unwrap();
    assert_eq!(
        worse,
        Promotion::NotBetter {
            current: version("1"),
            new: 0.85,
            old: 0.90
        }
    );
    assert_eq!(
        repo.resolve(&model, &production).await.unwrap(),
        version("1")
    );

    // Loss 0.05 < 0.10: lower is better for losses.
    let better = repo
        .promote_if_better(&model, &version("3"), &production, &loss)
        .await
        .unwrap();
    assert!(
        matches!(better, Promotion::Promoted { replaced: Some(ref v), .. } if *v == version("1"))
    );
    assert_eq!(
        repo.resolve(&model, &production).await.unwrap(),
        version("3")
    );

    // A tie does not beat the current version; the current one is already there.
    let tie = repo
        .promote_if_better(&model, &version("4"), &production, &accuracy)
        .await
        .unwrap();
    assert!(matches!(tie, Promotion::NotBetter { .. }), "{tie:?}");
    let same = repo
        .promote_if_better(&model, &version("3"), &production, &accuracy)
        .await
        .unwrap();
    assert_eq!(same, Promotion::AlreadyThere);

    // A new alias takes the first candidate; a metric neither manifest has is an error.
    let staging = version("staging");
    let first = repo
        .promote_if_better(&model, &version("2"), &staging, &accuracy)
        .await
        .unwrap();
    assert!(matches!(first, Promotion::Promoted { replaced: None, .. }));
    let unknown = MetricGate::parse("f1").unwrap();
    let error = repo
        .promote_if_better(&model, &version("4"), &production, &unknown)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no metric \"f1\"") && error.contains("test_accuracy"),
        "{error}"
    );
    assert!(MetricGate::parse("f1:up").is_err());
}

#[tokio::test]
async fn the_cli_gate_exits_3_and_keeps_production() {
    let (dir, repo) = scored_repo("gatecli", &[0.90, 0.80, 0.93]).await;
    let promote = |v: &str| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["models", "promote", "--model-repo"])
            .arg(dir.path())
            .args(["gatecli", v, "--if-better", "test_accuracy"])
            .output()
            .unwrap()
    };
    let model = ModelName::parse("gatecli").unwrap();
    let production = version("production");

    let refused = promote("2");
    assert_eq!(refused.status.code(), Some(3));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("not promoted") && said.contains("0.8") && said.contains("0.9"),
        "{said}"
    );
    assert_eq!(
        repo.resolve(&model, &production).await.unwrap(),
        version("1")
    );

    let promoted = promote("3");
    assert_eq!(
        promoted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let said = String::from_utf8_lossy(&promoted.stdout);
    assert!(
        said.contains("production -> 3") && said.contains("was 1"),
        "{said}"
    );
    assert_eq!(
        repo.resolve(&model, &production).await.unwrap(),
        version("3")
    );
}

#[tokio::test]
async fn a_training_job_ends_with_the_gate() {
    let train = |dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["train", "digits", "--epochs", "1", "--out"])
            .arg(dir)
            .args(["--promote-if-better", "test_accuracy"])
            .output()
            .unwrap()
    };
    let model = ModelName::parse("digits").unwrap();
    let production = version("production");

    // Production scores above any possible accuracy: the new version 2 stays a candidate.
    let (dir, repo) = scored_repo("digits", &[1.5]).await;
    let refused = train(dir.path());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{said}");
    assert!(said.contains("not promoted: digits 2"), "{said}");
    assert_eq!(
        repo.resolve(&model, &production).await.unwrap(),
        version("1")
    );
    assert!(repo.versions(&model).await.unwrap().contains(&version("2")));

    // Production scores 0: the trained version replaces it.
    let (dir, repo) = scored_repo("digits", &[0.0]).await;
    let promoted = train(dir.path());
    let said = String::from_utf8_lossy(&promoted.stderr);
    assert_eq!(promoted.status.code(), Some(0), "{said}");
    assert!(said.contains("digits production -> 2"), "{said}");
    assert_eq!(
        repo.resolve(&model, &production).await.unwrap(),
        version("2")
    );
}
