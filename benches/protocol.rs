//! Decode + validate of one 1×64 FP32 request (the digits input): the per-request protocol
//! cost on the hot path. `cargo bench --bench protocol`
#![allow(missing_docs)] // criterion_group! defines an undocumented `pub fn`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ember::protocol::{DataType, TensorSpec, decode_request, validate};
use std::hint::black_box;

fn decode_and_validate(c: &mut Criterion) {
    let pixels: Vec<String> = (0..64).map(|i| format!("{}.0", i % 17)).collect();
    let body = format!(
        r#"{{"id":"42","inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
        pixels.join(",")
    );
    let spec = [TensorSpec {
        name: "input".into(),
        datatype: DataType::Fp32,
        shape: vec![-1, 64],
    }];
    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_validate_1x64_fp32", |b| {
        b.iter(|| {
            let request = decode_request(black_box(body.as_bytes()), 16 << 20).unwrap();
            validate(request, &spec).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, decode_and_validate);
criterion_main!(benches);
