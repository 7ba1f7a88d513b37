//! `ember gateway` (a process) against a real RabbitMQ and a worker in this process: every
//! route of the Open Inference Protocol V2 REST API and each error status, over HTTP.

mod common;

use common::{KillOnDrop, LocalWorker, broker, held_out, image_request, repo_with, unique_model};
use ember::protocol::{DataType, Tensor, TensorData, encode_framed_request};
use ember::transport::Transport;
use serde_json::{Value, json};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// An `ember gateway` process on a free port; returns it and its base URL.
fn start_gateway(repo: &std::path::Path, flags: &[&str]) -> (KillOnDrop, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--model-repo"])
        .arg(repo)
        .args(flags)
        .env("EMBER_AMQP_URL", common::amqp_url())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the gateway prints its address")
            .unwrap();
        if let Some(url) = line.strip_prefix("ember gateway listening on ") {
            break url.to_owned();
        }
    };
    // Keep draining stderr so the gateway never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (KillOnDrop(child), url)
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(http: &reqwest::Client, url: String, body: Vec<u8>) -> (u16, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/json", "status {status}");
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_the_v2_status_and_body() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "gw").await;
    let model = worker.model.clone();
    // Known to the repository: one with declared queues but no worker, one without queues.
    let (idle, unqueued) = (unique_model("gw-idle"), unique_model("gw-noqueue"));
    transport.declare(&idle).await.unwrap();
    let repo = repo_with(&[&model, &idle, &unqueued]);
    let (_gateway, base) = start_gateway(
        repo.path(),
        &["--timeout", "1s", "--max-request-bytes", "65536"],
    );
    let http = reqwest::Client::new();
    let data = held_out();

    let (status, server) = get(&http, format!("{base}/v2")).await;
    assert_eq!((status, server["name"].as_str()), (200, Some("ember")));
    let health = [
        ("/v2/health/live".to_owned(), json!({"live": true})),
        ("/v2/health/ready".to_owned(), json!({"ready": true})),
        (
            format!("/v2/models/{model}/ready"),
            json!({"name": model, "ready": true}),
        ),
    ];
    for (path, expected) in health {
        assert_eq!(
            get(&http, format!("{base}{path}")).await,
            (200, expected),
            "{path}"
        );
    }
    // Known, but nothing would answer now: not ready, saying why.
    for (unserved, why) in [
        (
            &idle,
            format!("no worker consumes ember.{idle}.realtime now"),
        ),
        (&unqueued, format!("no queue ember.{unqueued}.realtime")),
    ] {
        let (status, body) = get(&http, format!("{base}/v2/models/{unserved}/ready")).await;
        assert_eq!((status, &body["ready"]), (503, &json!(false)), "{body}");
        assert!(body["reason"].as_str().unwrap().starts_with(&why), "{body}");
    }

    let (status, metadata) = get(&http, format!("{base}/v2/models/{model}")).await;
    assert_eq!(status, 200);
    assert_eq!(metadata["name"], model.as_str());
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
    );
    assert_eq!(metadata["outputs"][1]["name"], "label");
    let (status, _) = get(&http, format!("{base}/v2/models/{model}/versions/1")).await;
    assert_eq!(status, 200);

    let not_found = [
        format!("/v2/models/{model}/versions/9"),
        "/v2/models/no-such-model".into(),
        "/v2/models/Not%20A%20Name".into(),
        "/v2/models/no-such-model/ready".into(),
        "/v2/no/such/route".into(),
    ];
    for path in not_found {
        let (status, body) = get(&http, format!("{base}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["code"], "NOT_FOUND", "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    // Inference: the answer, for the production version and for a named one.
    for (path, i) in [("infer", 0), ("versions/1/infer", 1)] {
        let body = image_request(&format!("http-{i}"), data.image(i), 1);
        let (status, answer) = post(&http, format!("{base}/v2/models/{model}/{path}"), body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["id"], format!("http-{i}"));
        assert_eq!(answer["model_version"], "1");
        assert_eq!(answer["outputs"][1]["data"][0], data.labels[i]);
    }

    // Only the outputs asked for.
    let mut request: Value = serde_json::from_slice(&image_request("o", data.image(2), 1)).unwrap();
    request["outputs"] = json!([{"name": "label"}]);
    let url = format!("{base}/v2/models/{model}/infer");
    let (status, answer) = post(&http, url, request.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["outputs"][0]["data"][0], data.labels[2]);

    // Errors, each with its status and a V2 error body.
    let infer = |m: &str| format!("{base}/v2/models/{m}/infer");
    let wrong_shape =
        br#"{"id":"w","inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    request["outputs"] = json!([{"name": "logits"}]);
    let unknown_output = request.to_string().into_bytes();
    let cases: [(String, Vec<u8>, u16, &str); 7] = [
        (infer(&model), unknown_output, 400, "INVALID_ARGUMENT"),
        (infer(&model), wrong_shape.to_vec(), 400, "INVALID_ARGUMENT"),
        (
            infer(&model),
            b"{not json".to_vec(),
            400,
            "INVALID_ARGUMENT",
        ),
        (infer(&model), vec![b' '; 70_000], 413, "RESOURCE_EXHAUSTED"),
        (
            infer("no-such-model"),
            image_request("n", data.image(0), 1),
            404,
            "NOT_FOUND",
        ),
        (
            infer(&idle),
            image_request("i", data.image(0), 1),
            504,
            "DEADLINE_EXCEEDED",
        ),
        (
            infer(&unqueued),
            image_request("q", data.image(0), 1),
            404,
            "NOT_FOUND",
        ),
    ];
    // Binary tensor data: the digit framed after a JSON header; and a framing that lies.
    let digit = Tensor {
        name: "input".into(),
        shape: vec![1, 64],
        datatype: DataType::Fp32,
        data: TensorData::F32(data.image(3).to_vec()),
    };
    let (framed, header) = encode_framed_request("bin-1", &[digit], false);
    let send_framed = |body: Vec<u8>, header: usize| {
        http.post(infer(&model))
            .header("inference-header-content-length", header.to_string())
            .body(body)
            .send()
    };
    let answer: Value = send_framed(framed.clone(), header)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["id"], "bin-1", "{answer}");
    assert_eq!(answer["outputs"][1]["data"][0], data.labels[3], "{answer}");
    let lying = send_framed(framed[..framed.len() - 4].to_vec(), header)
        .await
        .unwrap();
    assert_eq!(lying.status().as_u16(), 400);
    let refusal: Value = lying.json().await.unwrap();
    assert_eq!(refusal["code"], "INVALID_ARGUMENT");
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("tensor 'input': binary_data_size 256 is past the body's end"),
        "{refusal}"
    );
    // Compressed bodies: an unknown coding, corrupt data and a bomb past the limit.
    let zeros = {
        use std::io::Write;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&vec![b' '; 10 << 20]).unwrap();
        gzip.finish().unwrap()
    };
    for (coding, body, expected, says) in [
        ("br", b"{}".to_vec(), 400, "Content-Encoding \"br\""),
        ("gzip", b"not gzip".to_vec(), 400, "does not inflate"),
        ("gzip", zeros, 413, "65536-byte limit"),
    ] {
        let refused = http
            .post(infer(&model))
            .header("content-encoding", coding)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), expected, "{coding}");
        let refusal: Value = refused.json().await.unwrap();
        let error = refusal["error"].as_str().unwrap();
        assert!(error.contains(says), "{coding}: {refusal}");
    }
    for (url, body, expected, code) in cases {
        let (status, answer) = post(&http, url.clone(), body).await;
        assert_eq!(status, expected, "{url}: {answer}");
        assert_eq!(answer["code"], code, "{url}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }

    let served = worker.stop().await;
    for model in [&served, &idle] {
        transport.delete(model).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidias_tritonclient_talks_to_the_gateway() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "gw-triton").await;
    let (_gateway, base) = start_gateway(worker.repo.path(), &[]);
    let data = held_out();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/triton_http.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(base.trim_start_matches("http://"))
        .arg(&worker.model)
        .arg(serde_json::to_string(data.image(5)).unwrap())
        .output()
        .expect("python3 (bash .ci/run installs tritonclient[http])");
    assert!(output.status.success(), "{}", common::output_text(&output));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["id"], "triton-1");
    assert_eq!(printed["labels"], json!(vec![data.labels[5]; 7]));
    assert_eq!(printed["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(printed["inputs"][0]["shape"], json!([-1, 64]));
    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}
