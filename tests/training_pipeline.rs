//! The pipeline a Kubeflow TrainJob runs, end to end against real services: `ember train ai4i`
//! publishes to Blob (Azurite) behind the promotion gate, a worse candidate is refused, and an
//! `ember serve` process reading the same Blob answers held-out processes over RabbitMQ with
//! the promoted version, applying the manifest's feature scaling to raw sensor values.

mod common;

use common::*;
use ember::protocol::{Lane, Reply, TensorData, decode_reply, encode_request};
use ember::store::{ModelName, Version};
use ember::transport::{Message, Properties, Transport, queues};
use std::time::{Duration, Instant};

/// Held-out processes sent to the worker.
const REQUESTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_push_promote_and_serve_ai4i_from_blob() {
    let blob = BlobRepo::new("train").await;
    let repo_url = &blob.url;
    let model = unique_model("ai4i");
    let train = |epochs: &str| {
        let args = [
            "train",
            "ai4i",
            "--name",
            &model,
            "--out",
            repo_url,
            "--epochs",
            epochs,
            "--promote-if-better",
            "test_roc_auc",
        ];
        let output = blob.ember(&args).output().unwrap();
        assert!(
            !output_text(&output).contains(AZURITE_KEY),
            "{}",
            output_text(&output)
        );
        output
    };

    let first = train("20");
    assert!(first.status.success(), "{}", output_text(&first));
    let manifest: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let metrics = &manifest["metrics"];
    let (auc, baseline_auc) = (
        metrics["test_roc_auc"].as_f64().unwrap(),
        metrics["logistic_roc_auc"].as_f64().unwrap(),
    );
    let (f1, baseline_f1) = (
        metrics["test_f1"].as_f64().unwrap(),
        metrics["logistic_f1"].as_f64().unwrap(),
    );
    assert!(
        auc > baseline_auc && f1 > baseline_f1,
        "MLP does not beat logistic regression: {metrics}"
    );
    assert!(auc > 0.95, "{metrics}");
    // Normalisation is in the manifest: the worker, not the producer, scales raw values.
    let architecture = &manifest["architecture"];
    assert_eq!(architecture["kind"], "failure-mlp");
    let mean_speed = architecture["means"][2].as_f64().unwrap();
    assert!((1400.0..1700.0).contains(&mean_speed), "{architecture}");

    // One epoch does worse on held-out ROC-AUC: published, not promoted, exit 3.
    let worse = train("1");
    assert_eq!(worse.status.code(), Some(3), "{}", output_text(&worse));
    assert!(
        output_text(&worse).contains("not promoted"),
        "{}",
        output_text(&worse)
    );

    let repo = blob.open();
    let name = ModelName::parse(&model).unwrap();
    let production = Version::parse("production").unwrap();
    assert_eq!(
        repo.resolve(&name, &production).await.unwrap().as_str(),
        "1"
    );
    let manifest = repo
        .load(&name, &Version::parse("1").unwrap())
        .await
        .unwrap()
        .manifest;
    let examples = ember::train::held_out_examples(&manifest).unwrap();

    let transport = broker(|c| c).await;
    transport.declare(&model).await.unwrap();
    let worker = blob.serve(&model, &[]);
    let mut results = transport
        .subscribe(&[queues::results(&model)], 1000)
        .await
        .unwrap();
    for (i, example) in examples.iter().take(REQUESTS).enumerate() {
        let message = Message {
            body: encode_request(&i.to_string(), &example.inputs).into(),
            properties: Properties {
                message_id: Some(format!("m-{i}")),
                lane: Some(Lane::Batch),
                ..Properties::default()
            },
        };
        transport
            .publish(&queues::requests(&model, Lane::Batch), message)
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut answered, mut correct) = (vec![false; REQUESTS], 0);
    while answered.iter().any(|a| !a) {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, results.next())
            .await
            .ok()
            .flatten()
            .expect("every request answered in time");
        let Reply::Ok(response) = decode_reply(&delivery.message.body).unwrap() else {
            panic!("an error answer: {:?}", delivery.message.body);
        };
        assert_eq!(response.model_version, "1", "served the promoted version");
        let i: usize = response.id.parse().unwrap();
        answered[i] = true;
        let failure = response
            .outputs
            .iter()
            .find(|o| o.name == "failure")
            .unwrap();
        correct += usize::from(failure.data == examples[i].expected);
        let probabilities = &response.outputs[0];
        assert_eq!(probabilities.shape, [1, 6]);
        delivery.settle.ack().await.unwrap();
    }
    let accuracy = correct as f64 / REQUESTS as f64;
    let positives = examples
        .iter()
        .take(REQUESTS)
        .filter(|e| e.expected == TensorData::Bool(vec![true]))
        .count();
    // Always answering "no failure" scores 1 - positives/REQUESTS; the model must do better.
    assert!(
        accuracy > 1.0 - positives as f64 / REQUESTS as f64 && accuracy > 0.95,
        "accuracy {accuracy} with {positives} failures in {REQUESTS}"
    );

    // A value no schema can reject (an unknown product variant) is answered with a clear error.
    let mut bad = examples[0].inputs.clone();
    bad[1].data = TensorData::Bytes(vec!["Q".into()]);
    let message = Message {
        body: encode_request("bad", &bad).into(),
        properties: Properties {
            message_id: Some("m-bad".into()),
            ..Properties::default()
        },
    };
    transport
        .publish(&queues::requests(&model, Lane::Batch), message)
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), results.next())
        .await
        .unwrap()
        .unwrap();
    let Reply::Err(error) = decode_reply(&delivery.message.body).unwrap() else {
        panic!("an unknown product variant was answered");
    };
    assert_eq!(
        (error.id.as_str(), error.code.as_str()),
        ("bad", "INVALID_ARGUMENT")
    );
    assert!(
        error.error.contains("product_type") && error.error.contains("\"Q\""),
        "{}",
        error.error
    );
    delivery.settle.ack().await.unwrap();

    results.stop().await;
    drop(worker);
    transport.delete(&model).await.unwrap();
}
