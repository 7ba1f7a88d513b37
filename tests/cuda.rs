//! The CUDA build on a real GPU: the shipped models give the CPU's answers on `cuda:0` in
//! FP32, FP16 and BF16, and serve end to end. The GPU tests are ignored (every build compiles
//! them, so they cannot rot); `scripts/gpu-check.sh` runs them, built with `--features cuda`,
//! with `--include-ignored` on the GPU machine.

mod common;

use common::precision::{SHIPPED, assert_close, held_out, outputs, shipped, shipped_repository};
use ember::batcher::BatchConfig;
use ember::models::Precision;
use ember::runtime::Device;
use ember::store::ModelName;

const GPU: Device = Device::Cuda(0);

#[test]
fn the_probe_names_the_gpu_or_says_what_is_missing() {
    match GPU.probe() {
        Ok(described) => assert!(described.starts_with("cuda:0 ("), "{described}"),
        Err(missing) if cfg!(feature = "cuda") => assert!(
            missing.contains("libcuda.so.1")
                || missing.contains("libnvrtc")
                || missing.contains("does not exist"),
            "{missing}"
        ),
        Err(missing) => assert_eq!(missing, ember::runtime::NO_CUDA),
    }
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
async fn shipped_models_give_the_cpus_answers_on_the_gpu() {
    for model in SHIPPED {
        let artifact = shipped(model).await;
        let batch = held_out(&artifact);
        let cpu = outputs(&artifact, Device::Cpu, Precision::Fp32, &batch);
        for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            let gpu = outputs(&artifact, GPU, precision, &batch);
            assert_close(
                &format!("{model} on {GPU} vs CPU FP32"),
                precision,
                &cpu,
                &gpu,
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
async fn the_pipeline_serves_every_request_on_the_gpu() {
    let options = |device| ember::demo::DemoOptions {
        requests: 2000,
        realtime_every: 4,
        batch: BatchConfig::default(),
        repo: shipped_repository(),
        model: ModelName::parse("digits").unwrap(),
        device,
    };
    let gpu = ember::demo::run(&options(GPU)).await.unwrap();
    let cpu = ember::demo::run(&options(Device::Cpu)).await.unwrap();
    assert_eq!((gpu.ok, gpu.errors), (2000, 0));
    assert_eq!(gpu.accuracy, cpu.accuracy);
    assert_eq!(gpu.device, "cuda:0");
}
