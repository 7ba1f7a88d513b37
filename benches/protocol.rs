//! Decode + validate of one request, the per-request protocol cost on the hot path, with its
//! tensor as JSON numbers and as binary tensor data (side by side, same values): the digits
//! input [1,64], a CWRU vibration window [1,2048] and an image [1,3,224,224], all FP32.
//! `cargo bench --bench protocol`
#![allow(missing_docs)] // criterion_group! defines an undocumented `pub fn`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ember::protocol::{
    DataType, Tensor, TensorData, TensorSpec, decode_framed_request, decode_request,
    encode_framed_request, encode_request, validate,
};
use std::hint::black_box;

fn decode_and_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Elements(1));
    for (label, shape) in [
        ("1x64", vec![1, 64]),
        ("1x2048", vec![1, 2048]),
        ("1x3x224x224", vec![1, 3, 224, 224]),
    ] {
        let elements: usize = shape.iter().product();
        // Values with full mantissas, as sensor readings and normalised pixels have.
        let values = (0..elements)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let input = Tensor {
            name: "input".into(),
            shape: shape.clone(),
            datatype: DataType::Fp32,
            data: TensorData::F32(values),
        };
        let spec = [TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: std::iter::once(-1)
                .chain(shape[1..].iter().map(|&d| d as i64))
                .collect(),
        }];
        let json = encode_request("42", std::slice::from_ref(&input));
        let (framed, header) = encode_framed_request("42", std::slice::from_ref(&input), false);
        group.bench_function(format!("json_{label}_fp32"), |b| {
            b.iter(|| {
                let request = decode_request(black_box(&json), 64 << 20).unwrap();
                validate(request, &spec).unwrap()
            })
        });
        group.bench_function(format!("binary_{label}_fp32"), |b| {
            b.iter(|| {
                let request =
                    decode_framed_request(black_box(&framed), Some(header), 64 << 20).unwrap();
                validate(request, &spec).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_and_validate);
criterion_main!(benches);
