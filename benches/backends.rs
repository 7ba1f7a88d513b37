//! Burn CPU backends on the digits CNN, side by side in one run (issue 3's backend choice).
//!
//! `cargo bench --features bench-backends --bench backends`
//! Throughput is images/s at batch 1 and 64, with the shipped weights of `models/digits/1`.
#![allow(missing_docs)] // criterion_group! defines an undocumented `pub fn`

use burn::prelude::Backend;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ember::models::Model;
use ember::protocol::TensorData;
use ember::store::{ModelName, Repository, Version};

fn load<B: Backend>(device: &B::Device) -> Box<dyn Model> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let repo = Repository::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).expect("repo");
    let (name, version) = (
        ModelName::parse("digits").unwrap(),
        Version::parse("1").unwrap(),
    );
    let artifact = runtime
        .block_on(repo.load(&name, &version))
        .expect("shipped model loads");
    artifact
        .manifest
        .architecture
        .load::<B>(
            &artifact.weights,
            &artifact.assets,
            ember::batcher::BatchConfig::default().max_batch_tokens,
            artifact.manifest.precision,
            device,
        )
        .expect("weights load")
}

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str) {
    let model = load::<B>(&Default::default());
    let mut group = c.benchmark_group("digits_cnn");
    for rows in [1usize, 64] {
        let pixels: Vec<f32> = (0..rows * 64).map(|i| (i % 17) as f32).collect();
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new(name, rows), &rows, |b, &rows| {
            b.iter(|| {
                model
                    .infer(rows, vec![TensorData::F32(pixels.clone())])
                    .expect("infer")
            })
        });
    }
    group.finish();
}

fn backends(c: &mut Criterion) {
    bench_backend::<burn::backend::NdArray>(c, "ndarray");
    bench_backend::<burn::backend::Flex>(c, "flex");
    #[allow(deprecated)] // burn-candle is deprecated in Burn 0.21; measured for comparison only
    bench_backend::<burn::backend::Candle>(c, "candle");
}

criterion_group!(benches, backends);
criterion_main!(benches);
