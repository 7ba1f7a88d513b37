//! Ember's CPU kernels (`src/runtime/cpu`) compute what Burn computes: every shipped model with
//! its real weights, a ResNet whose BatchNorms hold trained statistics, and all-MiniLM-L6-v2,
//! each compared output by output with the same network run by Burn's CPU backend, at batch
//! sizes that take the kernels' single-tile, multi-tile and threaded paths.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use common::minilm::{model_dir, reference};
use ember::batcher::BatchConfig;
use ember::models::bert::{BertConfig, BertEncoder};
use ember::models::resnet::ResNetConfig;
use ember::models::text::{Encoder, Tokens};
use ember::models::{Architecture, Model, Precision, record_weights};
use ember::protocol::TensorData;
use ember::runtime::cpu::{self, compile};
use ember::store::{Assets, ModelName, Repository, Version};

/// Both models' outputs on the same inputs, compared value by value: FP32 outputs within
/// `1e-5` of each other relative to the larger magnitude (and 1e-6 absolute near zero), every
/// other output identical.
fn assert_same_outputs(
    name: &str,
    burn: &dyn Model,
    ember: &dyn Model,
    rows: usize,
    inputs: &[TensorData],
) {
    let want = burn.infer(rows, inputs.to_vec()).unwrap();
    let got = ember.infer(rows, inputs.to_vec()).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: outputs");
    for (output, (got, want)) in got.iter().zip(&want).enumerate() {
        match (got, want) {
            (TensorData::F32(got), TensorData::F32(want)) => {
                assert_eq!(got.len(), want.len(), "{name} output {output}");
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    let tolerance = 1e-5 * g.abs().max(w.abs()) + 1e-6;
                    assert!(
                        (g - w).abs() <= tolerance,
                        "{name} rows {rows} output {output}[{i}]: Ember {g}, Burn {w}"
                    );
                }
            }
            _ => assert_eq!(got, want, "{name} rows {rows} output {output}"),
        }
    }
}

/// `rows` rows of inputs for `architecture`: pixels 0–16 or 0–255, vibration samples, or
/// sensors near the training means.
fn inputs(architecture: &Architecture, rows: usize) -> Vec<TensorData> {
    let mut state = 0x9e37_79b9_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    match architecture {
        Architecture::DigitsCnn(c) => vec![TensorData::F32(
            (0..rows * c.pixels())
                .map(|_| (next() * 17.0).floor())
                .collect(),
        )],
        Architecture::ResNet(c) => vec![TensorData::F32(
            (0..rows * c.pixels())
                .map(|_| (next() * 256.0).floor())
                .collect(),
        )],
        Architecture::VibrationCnn(c) => vec![TensorData::F32(
            (0..rows * c.window).map(|_| next() * 2.0 - 1.0).collect(),
        )],
        Architecture::FailureMlp(c) => vec![
            TensorData::F32(
                (0..rows)
                    .flat_map(|_| c.means.iter().zip(&c.stds).collect::<Vec<_>>())
                    .map(|(m, s)| m + s * (next() * 4.0 - 2.0))
                    .collect(),
            ),
            TensorData::Bytes(
                (0..rows)
                    .map(|r| c.variants[r % c.variants.len()].clone())
                    .collect(),
            ),
        ],
        other => panic!("no inputs for {other:?}"),
    }
}

fn compare(name: &str, architecture: &Architecture, weights: &[u8]) {
    let batch = BatchConfig::default();
    let (assets, fp32) = (Assets::new(), Precision::Fp32);
    let tokens = batch.max_batch_tokens;
    let burn = architecture
        .load::<Flex>(weights, &assets, tokens, fp32, &Default::default())
        .unwrap();
    let ember = compile(architecture, weights, &assets, tokens, fp32)
        .unwrap()
        .expect("compiled for the CPU kernels");
    for rows in [1, 7, 64, 300] {
        let inputs = inputs(architecture, rows);
        assert_same_outputs(name, burn.as_ref(), ember.as_ref(), rows, &inputs);
    }
}

#[tokio::test]
async fn every_shipped_model_gives_burns_outputs() {
    let repo = Repository::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).unwrap();
    for name in ["digits", "ai4i", "cwru"] {
        let artifact = repo
            .load(
                &ModelName::parse(name).unwrap(),
                &Version::parse("1").unwrap(),
            )
            .await
            .unwrap();
        compare(name, &artifact.manifest.architecture, &artifact.weights);
    }
}

#[test]
fn a_resnet_with_trained_batch_norm_statistics_gives_burns_outputs() {
    // Two stages (a projected shortcut and identity ones) on 16×16: every kind of layer.
    let config = ResNetConfig {
        image_size: 16,
        widths: vec![8, 16],
        blocks: vec![2, 2],
        ..ResNetConfig::resnet18_cifar(10)
    };
    let device = Default::default();
    <Autodiff<Flex> as Backend>::seed(&device, 11);
    let training = config.init::<Autodiff<Flex>>(&device);
    // Forward passes in training mode move the running means and variances off 0 and 1, so
    // folding them into the convolutions is tested with values that matter.
    for step in 0..3 {
        let pixels = Tensor::<Autodiff<Flex>, 2>::random(
            [16, config.pixels()],
            burn::tensor::Distribution::Uniform(0.0, 255.0 + step as f64),
            &device,
        );
        let _ = training.logits(pixels);
    }
    let weights = record_weights(training.valid()).unwrap();
    compare("resnet", &Architecture::ResNet(config), &weights);
}

#[test]
#[cfg_attr(
    not(feature = "services"),
    ignore = "needs the MiniLM weights that `.ci/run` fetches (--features services)"
)]
fn minilm_gives_burns_embeddings() {
    let dir = model_dir();
    let config: BertConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let burn =
        BertEncoder::<Flex>::from_safetensors(&config, &weights, &Default::default()).unwrap();
    let ember = cpu::compile::bert(&burn, config.layer_norm_eps).unwrap();
    // Batches of 8 in fixture order: lengths 2..256 padded together.
    for batch in reference().ids.chunks(8) {
        let tokens = Tokens::padded(batch.iter().map(Vec::as_slice));
        let want = Encoder::embed(&burn, tokens.clone()).unwrap();
        let got = Encoder::embed(&ember, tokens).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5, "value {i}: Ember {g}, Burn {w}");
        }
    }
}
