//! The binary tensor data extension as NVIDIA's own client writes it: the body
//! `tritonclient.http` sends by default (binary tensors, one JSON input beside them) decodes to
//! the tensors it was made from.

use ember::protocol::{DataType, TensorData, decode_framed_request};
use std::process::Command;

#[test]
fn tritonclients_binary_body_decodes_to_its_tensors() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/triton_binary_body.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 with tritonclient[http] (bash .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let header: usize = stderr.trim().parse().expect("the JSON header's length");
    let request = decode_framed_request(&output.stdout, Some(header), 1 << 20).unwrap();
    assert_eq!(request.id.as_deref(), Some("triton-1"));
    let expected = [
        (
            "fp32",
            DataType::Fp32,
            TensorData::F32((0..64).map(|i| i as f32 / 8.0).collect()),
        ),
        (
            "fp16",
            DataType::Fp16,
            TensorData::F32(vec![0.5, -2.0, 65504.0]),
        ),
        (
            "int32",
            DataType::Int32,
            TensorData::I64(vec![-7, 0, i64::from(i32::MAX)]),
        ),
        ("uint8", DataType::Uint8, TensorData::I64(vec![0, 255])),
        ("bool", DataType::Bool, TensorData::Bool(vec![true, false])),
        (
            "bytes",
            DataType::Bytes,
            TensorData::Bytes(vec!["héllo".into(), String::new()]),
        ),
        ("json", DataType::Fp32, TensorData::F32(vec![1.5, 2.5])),
    ];
    assert_eq!(request.inputs.len(), expected.len());
    for (tensor, (name, datatype, data)) in request.inputs.iter().zip(expected) {
        assert_eq!(
            (tensor.name.as_str(), tensor.datatype, &tensor.data),
            (name, datatype, &data)
        );
    }
}
