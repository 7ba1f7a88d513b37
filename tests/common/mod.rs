//! Helpers shared by the integration tests: model repositories, requests, the broker.
#![allow(dead_code)] // each test file uses a part

use ember::protocol::{DataType, Tensor, TensorData, encode_request};
use ember::train::digits;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use std::path::Path;

/// A temporary repository holding the shipped digits model under each of `names`.
pub fn repo_with(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
    for name in names {
        let version_dir = dir.path().join(name).join("1");
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::copy(shipped.join("1/model.bin"), version_dir.join("model.bin")).unwrap();
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(shipped.join("1/manifest.json")).unwrap())
                .unwrap();
        manifest["name"] = (*name).into();
        std::fs::write(version_dir.join("manifest.json"), manifest.to_string()).unwrap();
        std::fs::write(
            dir.path().join(name).join("aliases.json"),
            r#"{"production":"1"}"#,
        )
        .unwrap();
    }
    dir
}

/// The digits held out from training.
pub fn held_out() -> digits::Digits {
    digits::split(&digits::load(), 7, 0.2).1
}

/// An OIP request for `rows` digit images.
pub fn image_request(id: &str, pixels: &[f32], rows: usize) -> Vec<u8> {
    let input = Tensor {
        name: "input".into(),
        shape: vec![rows, digits::PIXELS],
        datatype: DataType::Fp32,
        data: TensorData::F32(pixels.to_vec()),
    };
    encode_request(id, &[input])
}

/// The broker's URL: `EMBER_AMQP_URL`, else the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("EMBER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A client of the test broker.
pub async fn broker(config: impl FnOnce(AmqpConfig) -> AmqpConfig) -> AmqpTransport {
    AmqpTransport::connect(config(AmqpConfig::new(amqp_url())))
        .await
        .expect("RabbitMQ at EMBER_AMQP_URL (bash .ci/run starts one)")
}

/// A model name no other test (or earlier run) uses.
pub fn unique_model(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
