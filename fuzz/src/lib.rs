//! What the fuzz targets check, as plain functions over raw bytes: `cargo fuzz` drives them
//! with generated inputs (`fuzz_targets/`), and `tests/fuzz_corpus.rs` replays the committed
//! corpus through them on every `cargo test`. Each must never panic but where it asserts.

use ember::protocol::{
    DEFAULT_MAX_REQUEST_BYTES, DataType, decode_framed_reply, decode_framed_request,
    decode_request, encode_framed_request, encode_request,
};
use ember::store::{Aliases, Manifest, ModelName, Version};
use ember::transport::amqp::{from_amqp, to_amqp};
use ember::worker::{RequestLimits, admit};
use std::path::{Component, Path};
use std::sync::OnceLock;

/// Request bodies, as any producer may send them: decoding either refuses with a reason or
/// yields tensors that re-encode to the same request, and checking them against each shipped
/// model's manifest answers without panicking.
pub fn request(data: &[u8]) {
    let Ok(request) = decode_request(data, DEFAULT_MAX_REQUEST_BYTES) else {
        return;
    };
    let encoded = encode_request(request.id.as_deref().unwrap_or_default(), &request.inputs);
    let again = decode_request(&encoded, usize::MAX).expect("a decoded request re-encodes");
    assert_eq!(
        again.inputs, request.inputs,
        "re-encoding changed the tensors"
    );
    for manifest in shipped_manifests() {
        let Ok(admitted) = admit(data, None, manifest, &RequestLimits::default()) else {
            continue;
        };
        let inputs = admitted.inputs;
        assert!(inputs.rows > 0, "a valid request has rows");
        assert_eq!(inputs.tensors.len(), manifest.inputs.len());
        for tensor in &inputs.tensors {
            assert_eq!(
                tensor.len() % inputs.rows,
                0,
                "ragged rows passed validation"
            );
        }
    }
}

/// Request bodies with binary tensors: the first two bytes (little-endian) are the JSON header's
/// length, the rest the body. Decoding either refuses with a reason or yields tensors that
/// re-encode, as JSON and framed again, to the same tensors.
pub fn binary_request(data: &[u8]) {
    let Some((length, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let header = usize::from(u16::from_le_bytes(*length));
    // The same bytes as a framed reply: a client reads them without panicking either.
    let _ = decode_framed_reply(body, Some(header));
    let Ok(request) = decode_framed_request(body, Some(header), DEFAULT_MAX_REQUEST_BYTES) else {
        return;
    };
    let id = request.id.as_deref().unwrap_or_default();
    let json = decode_request(&encode_request(id, &request.inputs), usize::MAX)
        .expect("decoded binary tensors encode as JSON");
    assert_eq!(json.inputs, request.inputs, "JSON changed the tensors");
    // Half precision given as JSON is carried unrounded: framing it rounds it.
    if request
        .inputs
        .iter()
        .any(|t| matches!(t.datatype, DataType::Fp16 | DataType::Bf16))
    {
        return;
    }
    let (framed, header) = encode_framed_request(id, &request.inputs, request.binary_output);
    let again = decode_framed_request(&framed, Some(header), usize::MAX)
        .expect("a decoded request re-encodes framed");
    assert_eq!(
        again.inputs, request.inputs,
        "re-framing changed the tensors"
    );
    assert_eq!(again.binary_output, request.binary_output);
}

/// `manifest.json` and `aliases.json` as a repository may hold them: what reads also writes
/// and reads back as the same model, and alias targets are plain names.
pub fn manifest(data: &[u8]) {
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let written = serde_json::to_vec(&manifest).expect("a manifest serializes");
        let again: Manifest = serde_json::from_slice(&written)
            .unwrap_or_else(|e| panic!("a manifest written by Ember does not read back: {e}"));
        assert_eq!(again.name, manifest.name);
        assert_eq!(again.version, manifest.version);
        assert_eq!(again.inputs, manifest.inputs);
        assert_eq!(again.outputs, manifest.outputs);
        let _ = manifest.architecture.signature();
    }
    if let Ok(aliases) = serde_json::from_slice::<Aliases>(data) {
        for version in aliases.values() {
            assert_one_segment(version.as_str());
        }
    }
}

/// Model names and versions (request headers, CLI arguments, alias targets, asset names): a
/// valid one is a single plain path segment, whether parsed or deserialized.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let json = serde_json::to_string(text).expect("a string serializes");
    let model = ModelName::parse(text);
    assert_eq!(
        model.is_ok(),
        serde_json::from_str::<ModelName>(&json).is_ok()
    );
    if let Ok(model) = model {
        assert_one_segment(model.as_str());
    }
    let version = Version::parse(text);
    assert_eq!(
        version.is_ok(),
        serde_json::from_str::<Version>(&json).is_ok()
    );
    if let Ok(version) = version {
        assert_one_segment(version.as_str());
    }
}

/// AMQP basic properties as any client may send them: what Ember reads of them survives being
/// written back to AMQP (as it does when it answers, requeues or dead-letters).
pub fn amqp_headers(data: &[u8]) {
    let Ok((_, amqp)) = lapin::protocol::basic::parse_properties(data) else {
        return;
    };
    let read = from_amqp(&amqp);
    assert_eq!(from_amqp(&to_amqp(&read)), read);
}

/// The manifests of the models shipped in `models/`.
fn shipped_manifests() -> &'static [Manifest] {
    static MANIFESTS: OnceLock<Vec<Manifest>> = OnceLock::new();
    MANIFESTS.get_or_init(|| {
        [
            include_bytes!("../../models/digits/1/manifest.json").as_slice(),
            include_bytes!("../../models/cwru/1/manifest.json"),
            include_bytes!("../../models/ai4i/1/manifest.json"),
        ]
        .iter()
        .map(|json| serde_json::from_slice(json).expect("shipped manifests read"))
        .collect()
    })
}

fn assert_one_segment(name: &str) {
    let mut components = Path::new(name).components();
    let plain = matches!(components.next(), Some(Component::Normal(segment)) if segment == name);
    assert!(
        plain && components.next().is_none() && !name.contains(['/', '\\']),
        "{name:?} is not one plain path segment"
    );
}
