//! Request bodies: held-out examples of trained models, lines of a JSONL file, or random tensors
//! shaped by a model's manifest; as JSON, or with `--binary` as binary tensor data both ways
//! (inputs framed after the JSON header, every output asked for as binary data).

use crate::load::Rng;
use anyhow::Context;
use bytes::Bytes;
use ember::protocol::{
    DataType, Tensor, TensorData, TensorSpec, decode_request, encode_framed_request,
    encode_request, reframe_request,
};
use ember::store::Manifest;
use ember::train::digits;
use std::path::Path;
use std::sync::Arc;

/// Request bodies, cycled through by the generator.
pub type Payloads = Arc<Vec<Payload>>;

/// One request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// The body.
    pub body: Bytes,
    /// Its JSON header's length when binary-framed (`inference-header-content-length`).
    pub header_length: Option<usize>,
}

impl Payload {
    /// A request `id` for `inputs`: binary both ways with `binary`, else JSON.
    fn new(id: &str, inputs: &[Tensor], binary: bool) -> Self {
        if binary {
            let (body, length) = encode_framed_request(id, inputs, true);
            Self::framed(body, length)
        } else {
            Self::json(encode_request(id, inputs))
        }
    }

    fn json(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            header_length: None,
        }
    }

    fn framed(body: Vec<u8>, header_length: usize) -> Self {
        Self {
            body: body.into(),
            header_length: Some(header_length),
        }
    }
}

/// The bodies alone (for the raw-broker baselines, which do not read them).
pub fn bodies(payloads: &Payloads) -> Arc<Vec<Bytes>> {
    Arc::new(payloads.iter().map(|p| p.body.clone()).collect())
}

/// Distinct bodies generated per model: enough that caches see varied inputs.
const GENERATED: usize = 256;

/// Digits requests, one held-out image each.
pub fn digits(count: usize, binary: bool) -> Payloads {
    let held_out = held_out_digits();
    Arc::new(
        (0..count.min(held_out.len()))
            .map(|i| {
                let input = Tensor {
                    name: "input".into(),
                    shape: vec![1, digits::PIXELS],
                    datatype: DataType::Fp32,
                    data: TensorData::F32(held_out.image(i).to_vec()),
                };
                Payload::new(&i.to_string(), &[input], binary)
            })
            .collect(),
    )
}

/// The digits images the model was not trained on.
pub fn held_out_digits() -> digits::Digits {
    digits::split(&digits::shipped(), 7, 0.2).1
}

/// One OIP V2 request body per non-empty line of `path` (with `binary`, each re-framed with
/// binary tensor data both ways).
pub fn from_jsonl(path: &Path, binary: bool) -> anyhow::Result<Payloads> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let payloads: Vec<Payload> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            if !binary {
                return Ok(Payload::json(line.to_owned()));
            }
            let mut request = decode_request(line.as_bytes(), usize::MAX)
                .with_context(|| format!("{} request {}", path.display(), i + 1))?;
            request.binary_output = true;
            let (body, length) = reframe_request(&request);
            Ok(Payload::framed(body, length))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!payloads.is_empty(), "{} holds no requests", path.display());
    Ok(Arc::new(payloads))
}

/// Single-row requests for `manifest`'s model: its held-out examples where `ember train` made it
/// (real values that pass every check), else random values for every input it declares (any batch
/// dimension set to 1; integers in 0..100, so token ids stay inside any vocabulary).
pub fn for_manifest(manifest: &Manifest, seed: u64, binary: bool) -> Payloads {
    if let Ok(examples) = ember::train::held_out_examples(manifest)
        && !examples.is_empty()
    {
        return Arc::new(
            (0..GENERATED)
                .map(|i| Payload::new(&i.to_string(), &examples[i % examples.len()].inputs, binary))
                .collect(),
        );
    }
    let mut rng = Rng::new(seed);
    Arc::new(
        (0..GENERATED)
            .map(|i| {
                let inputs: Vec<Tensor> = manifest
                    .inputs
                    .iter()
                    .map(|spec| random_tensor(spec, &mut rng))
                    .collect();
                Payload::new(&i.to_string(), &inputs, binary)
            })
            .collect(),
    )
}

fn random_tensor(spec: &TensorSpec, rng: &mut Rng) -> Tensor {
    let shape: Vec<usize> = spec.shape.iter().map(|&d| d.max(1) as usize).collect();
    let len = shape.iter().product();
    let data = match TensorData::zeros(spec.datatype, 0) {
        TensorData::F32(_) => TensorData::F32((0..len).map(|_| rng.unit() as f32).collect()),
        TensorData::F64(_) => TensorData::F64((0..len).map(|_| rng.unit()).collect()),
        TensorData::I64(_) => {
            TensorData::I64((0..len).map(|_| (rng.unit() * 100.0) as i64).collect())
        }
        TensorData::Bool(_) => TensorData::Bool((0..len).map(|_| rng.unit() < 0.5).collect()),
        TensorData::Bytes(_) => TensorData::Bytes((0..len).map(|i| format!("text {i}")).collect()),
    };
    Tensor {
        name: spec.name.clone(),
        shape,
        datatype: spec.datatype,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember::protocol::{decode_framed_request, validate};
    use ember::store::{ModelName, Repository, Version};

    #[tokio::test]
    async fn generated_requests_pass_the_models_own_validation() {
        let repo = Repository::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).unwrap();
        let name = ModelName::parse("digits").unwrap();
        let version = repo
            .resolve(&name, &Version::parse("production").unwrap())
            .await
            .unwrap();
        let trained = repo.manifest(&name, &version).await.unwrap();
        // Without a training record (an identity model), random values of the declared shapes.
        let untrained = Manifest {
            architecture: ember::models::Architecture::Identity { width: 64 },
            precision: Default::default(),
            training: None,
            ..trained.clone()
        };
        for (manifest, binary) in [
            (trained.clone(), false),
            (trained, true),
            (untrained, false),
        ] {
            let payloads = for_manifest(&manifest, 3, binary);
            assert_eq!(payloads.len(), GENERATED);
            assert_ne!(payloads[0], payloads[1], "bodies differ");
            for payload in payloads.iter().take(8) {
                assert_eq!(payload.header_length.is_some(), binary);
                let request =
                    decode_framed_request(&payload.body, payload.header_length, usize::MAX)
                        .unwrap();
                assert_eq!(request.binary_output, binary);
                let inputs = validate(request, &manifest.inputs).unwrap();
                manifest.architecture.check(&inputs).unwrap();
                assert_eq!(inputs.rows, 1);
            }
        }
    }
}
