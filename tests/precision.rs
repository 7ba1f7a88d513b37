//! Mixed precision (a manifest's `precision`): every shipped model computes in FP16 and BF16
//! and gives FP32's answers on its whole held-out split, and the executor honours the field.
//! Runs on the CPU backend; `tests/cuda.rs` repeats the comparison on a GPU.

mod common;

use common::precision::{SHIPPED, assert_close, held_out, outputs, shipped};
use ember::batcher::BatchConfig;
use ember::models::Precision;
use ember::protocol::ValidatedInputs;
use ember::runtime::{Device, Executor, Work};
use ember::store::Manifest;

#[tokio::test]
async fn every_shipped_model_gives_fp32_answers_in_fp16_and_bf16() {
    for model in SHIPPED {
        let artifact = shipped(model).await;
        let batch = held_out(&artifact);
        let fp32 = outputs(&artifact, Device::Cpu, Precision::Fp32, &batch);
        for precision in [Precision::Fp16, Precision::Bf16] {
            let half = outputs(&artifact, Device::Cpu, precision, &batch);
            let what = format!("{model} ({} rows)", batch.0);
            let largest = assert_close(&what, precision, &fp32, &half);
            // Bit-identical outputs would mean the precision was never applied.
            assert!(largest > 0.0, "{what} {precision}: identical to FP32");
        }
    }
}

#[tokio::test]
async fn the_executor_computes_in_the_manifests_precision() {
    let mut artifact = shipped("digits").await;
    let batch = held_out(&artifact);
    let bf16 = outputs(&artifact, Device::Cpu, Precision::Bf16, &batch);
    artifact.manifest.precision = Precision::Bf16;
    let (rows, tensors) = batch;
    let tokens = BatchConfig::default().max_batch_tokens;
    let (executor, _done) = Executor::start(&artifact, rows, tokens, Device::Cpu)
        .await
        .unwrap();
    let (respond, answer) = tokio::sync::oneshot::channel();
    let inputs = ValidatedInputs { rows, tensors };
    assert!(executor.run(vec![Work { inputs, respond }]));
    assert_eq!(answer.await.unwrap().unwrap(), bf16);
}

#[test]
fn a_manifest_says_its_precision_and_an_unknown_one_is_refused() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/digits/1/manifest.json"
    ))
    .unwrap();
    let fp32: Manifest = serde_json::from_str(&manifest).unwrap();
    assert_eq!(fp32.precision, Precision::Fp32);
    // FP32 is left unsaid, so manifests written before the field read back unchanged.
    assert!(!serde_json::to_string(&fp32).unwrap().contains("precision"));
    let mut json: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    json["precision"] = "bf16".into();
    let bf16: Manifest = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(bf16.precision, Precision::Bf16);
    json["precision"] = "fp8".into();
    let error = serde_json::from_value::<Manifest>(json)
        .unwrap_err()
        .to_string();
    assert!(error.contains("fp8") && error.contains("bf16"), "{error}");
}

#[test]
fn devices_parse_and_a_cpu_build_refuses_a_gpu_clearly() {
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
    assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
    assert!(
        "gpu"
            .parse::<Device>()
            .unwrap_err()
            .contains("cpu, cuda, cuda:N")
    );
    assert!(Device::Cpu.probe().unwrap().starts_with("cpu"));
    if !cfg!(feature = "cuda") {
        assert_eq!(
            Device::Cuda(0).probe().unwrap_err(),
            ember::runtime::NO_CUDA
        );
    }
}
