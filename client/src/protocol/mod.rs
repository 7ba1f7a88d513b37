//! The wire protocol: Open Inference Protocol (KServe V2) JSON requests and responses, decoding
//! with a size limit, and validation against a model's declared inputs.

pub mod binary;
mod error;
mod tensor;

pub use error::{ErrorCode, ErrorResponse, InferError};
pub use tensor::{DataType, TensorData};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;

/// Hex sha256 of `bytes`: how claim checks and manifests name their content.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Default for `--max-request-bytes`: 16 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;

/// Which queue a request came from: realtime work is always batched before batch work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Someone is waiting (RPC); served first.
    #[default]
    Realtime,
    /// Bulk work; served when no realtime work waits.
    Batch,
}

impl Lane {
    /// The name used in headers and queue names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Realtime => "realtime",
            Self::Batch => "batch",
        }
    }

    /// Parses a header value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "realtime" => Some(Self::Realtime),
            "batch" => Some(Self::Batch),
            _ => None,
        }
    }
}

/// A named tensor: an input of a request or an output of a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tensor {
    /// Input or output name, as in the model's manifest.
    pub name: String,
    /// Dimensions, row-major.
    pub shape: Vec<usize>,
    /// Element type.
    pub datatype: DataType,
    /// Elements, row-major; `data.len()` equals the product of `shape` once validated.
    pub data: TensorData,
}

/// A decoded (not yet validated) inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The request's `id`, echoed in its response.
    pub id: Option<String>,
    /// Its input tensors.
    pub inputs: Vec<Tensor>,
    /// The outputs wanted (`outputs` of the request); `None`: all of them.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.binary_data_output`: outputs come as binary data unless an output's own
    /// `binary_data` says otherwise.
    pub binary_output: bool,
}

/// An output a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// Its name.
    pub name: String,
    /// `parameters.binary_data`: as binary data (`true`) or JSON; `None`: the request's
    /// `binary_data_output`.
    pub binary: Option<bool>,
}

/// A successful inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// The id of the request this answers.
    pub id: String,
    /// The model that computed it.
    pub model_name: String,
    /// The exact version (never an alias) that computed it.
    pub model_version: String,
    /// Output tensors, in the order of the model's manifest.
    pub outputs: Vec<Tensor>,
    /// Which outputs travel as binary data (by position in `outputs`; past its end: JSON).
    pub binary: Vec<bool>,
}

/// A reply body as a client reads it: a response or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The model's answer.
    Ok(InferResponse),
    /// Why there is none.
    Err(ErrorResponse),
}

/// A tensor's declared name, datatype and shape; `-1` marks the batch dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name clients use.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions; the first may be `-1` (any batch size).
    pub shape: Vec<i64>,
}

/// A request checked against a model's inputs: one tensor per declared input, in declared order,
/// all with the same number of rows (the batch dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedInputs {
    /// Rows in every input (the request's batch size).
    pub rows: usize,
    /// Data of each declared input, in manifest order.
    pub tensors: Vec<TensorData>,
}

#[derive(Deserialize)]
struct WireTensor<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    shape: Vec<i64>,
    datatype: DataType,
    /// JSON elements; absent when the tensor is binary (`parameters.binary_data_size`).
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    parameters: Option<TensorParameters>,
}

/// A tensor's `parameters`: the binary extension's byte length, the rest checked and ignored.
#[derive(Deserialize)]
struct TensorParameters {
    #[serde(default, deserialize_with = "present")]
    binary_data_size: Option<u64>,
    #[serde(flatten)]
    _others: HashMap<String, IgnoredAny>,
}

/// A request's `parameters`: whether outputs are wanted as binary data, the rest ignored.
#[derive(Deserialize)]
struct RequestParameters {
    #[serde(default, deserialize_with = "present")]
    binary_data_output: Option<bool>,
    #[serde(flatten)]
    _others: HashMap<String, IgnoredAny>,
}

/// A requested output's `parameters`: whether it is wanted as binary data, the rest ignored.
#[derive(Deserialize)]
struct OutputParameters {
    #[serde(default, deserialize_with = "present")]
    binary_data: Option<bool>,
    #[serde(flatten)]
    _others: HashMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    inputs: Vec<WireTensor<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    outputs: Option<Vec<WireOutput<'a>>>,
    #[serde(default, deserialize_with = "present")]
    parameters: Option<RequestParameters>,
}

/// An optional field that, when present, has its type: `null` is not a string, array or
/// object.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A requested output.
#[derive(Deserialize)]
struct WireOutput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, deserialize_with = "present")]
    parameters: Option<OutputParameters>,
}

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model_name: String,
    #[serde(default)]
    model_version: String,
    #[serde(borrow)]
    outputs: Vec<WireTensor<'a>>,
}

impl WireTensor<'_> {
    /// The tensor, its data parsed: JSON `data`, or its `binary_data_size` bytes taken from the
    /// front of `binary` (the body's binary part; `None` if it has none). `body` is the message
    /// it came in, where errors are placed.
    fn into_tensor(self, body: &[u8], binary: Option<&mut &[u8]>) -> Result<Tensor, String> {
        let name = self.name.into_owned();
        let shape = self
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| format!("tensor '{name}': negative dimension {d}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let elements = element_count(&shape)
            .ok_or_else(|| format!("tensor '{name}': shape {shape:?} is too large"))?;
        // The hint only pre-sizes the buffer; cap it so a lying shape cannot reserve much.
        let size = self.parameters.and_then(|p| p.binary_data_size);
        let data = match (self.data, size) {
            (Some(json), None) => {
                let json = json.get();
                TensorData::from_json(json, self.datatype, elements.min(1 << 20))
                    .map_err(|e| format!("tensor '{name}': {}", placed(&e, json, body)))?
            }
            (None, Some(size)) => {
                let Some(binary) = binary else {
                    return Err(format!(
                        "tensor '{name}': binary_data_size without a binary part \
                         (Inference-Header-Content-Length)"
                    ));
                };
                let taken = usize::try_from(size)
                    .ok()
                    .and_then(|size| binary.split_at_checked(size));
                let Some((raw, rest)) = taken else {
                    return Err(format!(
                        "tensor '{name}': binary_data_size {size} is past the body's end ({} \
                         binary bytes left)",
                        binary.len()
                    ));
                };
                *binary = rest;
                binary::decode(raw, self.datatype, elements)
                    .map_err(|e| format!("tensor '{name}': {e}"))?
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "tensor '{name}': both data and parameters.binary_data_size"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "tensor '{name}': no data (nor parameters.binary_data_size)"
                ));
            }
        };
        Ok(Tensor {
            name,
            shape,
            datatype: self.datatype,
            data,
        })
    }
}

/// Product of `shape`, or `None` on overflow.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A request that could not be decoded, with its id when the id itself could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct DecodeError {
    /// Why.
    pub error: InferError,
    /// The request's `id`, if read before the failure.
    pub id: Option<String>,
}

/// The `id` of an OIP request body, if it is JSON with one (the rest is skipped, not decoded):
/// what an answer that does not need the request, such as `NOT_FOUND`, is tagged with.
pub fn request_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_slice::<Id>(body).ok()?.id
}

/// Decodes a JSON request body, refusing one over `max_bytes` before parsing any of it.
pub fn decode_request(body: &[u8], max_bytes: usize) -> Result<InferRequest, DecodeError> {
    decode_framed_request(body, None, max_bytes)
}

/// Decodes a request body: JSON, or, with `header_length` (`Inference-Header-Content-Length`),
/// a JSON header of that many bytes followed by its binary tensors ([`binary`]). Refuses a body
/// over `max_bytes` before parsing any of it, and binary bytes that no tensor claims.
pub fn decode_framed_request(
    body: &[u8],
    header_length: Option<usize>,
    max_bytes: usize,
) -> Result<InferRequest, DecodeError> {
    let unread = |error| DecodeError { error, id: None };
    if body.len() > max_bytes {
        let message = format!("request is {} bytes; the limit is {max_bytes}", body.len());
        return Err(unread(InferError::new(
            ErrorCode::ResourceExhausted,
            message,
        )));
    }
    let (header, mut binary) =
        split_framing(body, header_length).map_err(|e| unread(InferError::invalid(e)))?;
    if header.iter().all(u8::is_ascii_whitespace) {
        return Err(unread(InferError::invalid("empty request body")));
    }
    let wire: WireRequest = serde_json::from_slice(header).map_err(|e| {
        let message = match std::str::from_utf8(header) {
            Err(bad) => format!(
                "malformed request: the body is not UTF-8 (invalid byte at offset {}); JSON \
                 strings, BYTES data included, must be UTF-8",
                bad.valid_up_to()
            ),
            Ok(_) => format!("malformed request: {e}"),
        };
        unread(InferError::invalid(message))
    })?;
    let id = wire.id.map(Cow::into_owned);
    let inputs = wire
        .inputs
        .into_iter()
        .map(|tensor| tensor.into_tensor(header, binary.as_mut()))
        .collect::<Result<_, _>>()
        .and_then(|inputs| all_read(binary).map(|()| inputs));
    match inputs {
        Ok(inputs) => Ok(InferRequest {
            id,
            inputs,
            outputs: wire.outputs.map(|outputs| {
                outputs
                    .into_iter()
                    .map(|o| RequestedOutput {
                        name: o.name.into_owned(),
                        binary: o.parameters.and_then(|p| p.binary_data),
                    })
                    .collect()
            }),
            binary_output: wire
                .parameters
                .and_then(|p| p.binary_data_output)
                .unwrap_or(false),
        }),
        Err(message) => Err(DecodeError {
            error: InferError::invalid(message),
            id,
        }),
    }
}

/// A framed body's JSON header and binary part (`None` when unframed).
fn split_framing(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<(&[u8], Option<&[u8]>), String> {
    match header_length {
        None => Ok((body, None)),
        Some(length) => body
            .split_at_checked(length)
            .map(|(header, binary)| (header, Some(binary)))
            .ok_or_else(|| {
                format!(
                    "Inference-Header-Content-Length {length} is past the body's {} bytes",
                    body.len()
                )
            }),
    }
}

/// Refuses binary bytes that no tensor claimed.
fn all_read(binary: Option<&[u8]>) -> Result<(), String> {
    match binary {
        Some(left) if !left.is_empty() => {
            Err(format!("{} bytes after the last binary tensor", left.len()))
        }
        _ => Ok(()),
    }
}

/// `error`, found parsing `part` (a slice of `body`: a tensor's `data`), with its line and column
/// counted in `body`, as the sender of the body counts them.
fn placed(error: &serde_json::Error, part: &str, body: &[u8]) -> String {
    let message = error.to_string();
    let located = format!(" at line {} column {}", error.line(), error.column());
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let Some(what) = message
        .strip_suffix(&located)
        .filter(|_| start <= body.len())
    else {
        return message;
    };
    let before = &body[..start];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let base_line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let (line, column) = match error.line() {
        1 => (base_line, start - line_start + error.column()),
        n => (base_line + n - 1, error.column()),
    };
    format!("{what} at line {line} column {column}")
}

/// A tensor as the JSON part of a body writes it: its `data`, or the size of its binary data.
#[derive(Serialize)]
struct TensorHeader<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: DataType,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// The headers of `tensors`, those `binary` marks written to `out` as binary data.
fn tensor_headers<'a>(
    tensors: &'a [Tensor],
    binary: impl Fn(usize) -> bool,
    out: &mut Vec<u8>,
) -> Vec<TensorHeader<'a>> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let binary = binary(i);
            TensorHeader {
                name: &t.name,
                shape: &t.shape,
                datatype: t.datatype,
                data: (!binary).then_some(&t.data),
                parameters: binary.then(|| BinarySize {
                    binary_data_size: binary::encode(&t.data, t.datatype, out),
                }),
            }
        })
        .collect()
}

/// `header` serialized, then `binary`; with the header's length.
fn framed(header: &impl Serialize, binary: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).expect("tensors serialize");
    let header_length = body.len();
    body.extend_from_slice(binary);
    (body, header_length)
}

/// Encodes a request body with every input binary: the JSON header, then the inputs' bytes.
/// Returns the body and the header's length (`Inference-Header-Content-Length`). With
/// `binary_output` it asks for every output as binary data too.
pub fn encode_framed_request(id: &str, inputs: &[Tensor], binary_output: bool) -> (Vec<u8>, usize) {
    framed_request(Some(id), inputs, None, binary_output)
}

/// `request` encoded again with every input binary (e.g. a JSON line sent framed): its id, the
/// outputs it names and whether it wants them binary are kept.
pub fn reframe_request(request: &InferRequest) -> (Vec<u8>, usize) {
    framed_request(
        request.id.as_deref(),
        &request.inputs,
        request.outputs.as_deref(),
        request.binary_output,
    )
}

/// `body`, a JSON request, with its inputs as binary data ([`reframe_request`]): the body and
/// its header's length. `None` when it does not decode: sent as it is, the worker refuses it
/// with the reason.
pub fn to_binary(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let request = decode_request(body, usize::MAX).ok()?;
    Some(reframe_request(&request))
}

fn framed_request(
    id: Option<&str>,
    inputs: &[Tensor],
    outputs: Option<&[RequestedOutput]>,
    binary_output: bool,
) -> (Vec<u8>, usize) {
    #[derive(Serialize)]
    struct Parameters {
        binary_data_output: bool,
    }
    #[derive(Serialize)]
    struct OutputParameters {
        binary_data: bool,
    }
    #[derive(Serialize)]
    struct Output<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<OutputParameters>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        inputs: Vec<TensorHeader<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        outputs: Option<Vec<Output<'a>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<Parameters>,
    }
    let mut binary = Vec::new();
    let body = Body {
        id,
        inputs: tensor_headers(inputs, |_| true, &mut binary),
        outputs: outputs.map(|outputs| {
            outputs
                .iter()
                .map(|o| Output {
                    name: &o.name,
                    parameters: o.binary.map(|binary_data| OutputParameters { binary_data }),
                })
                .collect()
        }),
        parameters: binary_output.then_some(Parameters {
            binary_data_output: true,
        }),
    };
    framed(&body, &binary)
}

/// Decodes a JSON reply body (response or error response), as a client does.
pub fn decode_reply(body: &[u8]) -> Result<Reply, String> {
    decode_framed_reply(body, None)
}

/// Decodes a reply body: JSON, or, with `header_length` (the reply's
/// `inference-header-content-length`), a JSON header followed by the binary outputs.
pub fn decode_framed_reply(body: &[u8], header_length: Option<usize>) -> Result<Reply, String> {
    let (header, mut binary) = split_framing(body, header_length)?;
    if let Ok(error) = serde_json::from_slice::<ErrorResponse>(header) {
        return Ok(Reply::Err(error));
    }
    let wire: WireResponse = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let binary_outputs = wire.outputs.iter().map(|t| t.data.is_none()).collect();
    let outputs = wire
        .outputs
        .into_iter()
        .map(|tensor| tensor.into_tensor(header, binary.as_mut()))
        .collect::<Result<_, _>>()?;
    all_read(binary)?;
    Ok(Reply::Ok(InferResponse {
        id: wire.id,
        model_name: wire.model_name,
        model_version: wire.model_version,
        outputs,
        binary: binary_outputs,
    }))
}

/// A reply body as JSON: a binary-framed one (`header_length`) written again with every output
/// as JSON `data`, a JSON one as it is.
pub fn reply_as_json(body: &[u8], header_length: Option<usize>) -> Result<Cow<'_, [u8]>, String> {
    if header_length.is_none() {
        return Ok(Cow::Borrowed(body));
    }
    let reply = match decode_framed_reply(body, header_length)? {
        Reply::Ok(response) => Ok(InferResponse {
            binary: Vec::new(),
            ..response
        }),
        Reply::Err(error) => Err(error),
    };
    Ok(Cow::Owned(encode_reply(&reply).0))
}

/// Encodes a request body (for producers written in Rust: the CLI, the demo, tests).
pub fn encode_request(id: &str, inputs: &[Tensor]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        inputs: &'a [Tensor],
    }
    serde_json::to_vec(&Body { id, inputs }).expect("tensors serialize")
}

/// Encodes a response or error body: JSON, or, when the response has binary outputs, its JSON
/// header followed by their bytes, with the header's length (`Inference-Header-Content-Length`).
pub fn encode_reply(reply: &Result<InferResponse, ErrorResponse>) -> (Vec<u8>, Option<usize>) {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        model_name: &'a str,
        model_version: &'a str,
        outputs: Vec<TensorHeader<'a>>,
    }
    let response = match reply {
        Ok(response) => response,
        Err(error) => return (serde_json::to_vec(error).expect("errors serialize"), None),
    };
    let mut binary = Vec::new();
    let is_binary = |i| response.binary.get(i).copied().unwrap_or(false);
    let body = Body {
        id: &response.id,
        model_name: &response.model_name,
        model_version: &response.model_version,
        outputs: tensor_headers(&response.outputs, is_binary, &mut binary),
    };
    let (body, header_length) = framed(&body, &binary);
    (
        body,
        response.binary.contains(&true).then_some(header_length),
    )
}

/// Checks `request` against the model's declared `inputs`: every declared input present once,
/// nothing undeclared, datatypes equal, shapes equal but for the batch dimension, which must be
/// the same in every input, and element counts equal to the product of the shape.
pub fn validate(
    request: InferRequest,
    inputs: &[TensorSpec],
) -> Result<ValidatedInputs, InferError> {
    if let Some(extra) = request
        .inputs
        .iter()
        .find(|t| !inputs.iter().any(|s| s.name == t.name))
    {
        let expected: Vec<_> = inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(InferError::invalid(format!(
            "unknown input '{}'; the model takes {expected:?}",
            extra.name
        )));
    }
    let mut given = request.inputs;
    let mut rows = None;
    let mut tensors = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let mut matching = given.iter().filter(|t| t.name == spec.name);
        let position = match (matching.next(), matching.next()) {
            (Some(_), Some(_)) => {
                return Err(InferError::invalid(format!(
                    "input '{}' is given twice",
                    spec.name
                )));
            }
            (None, _) => {
                return Err(InferError::invalid(format!(
                    "missing input '{}'",
                    spec.name
                )));
            }
            (Some(_), None) => given
                .iter()
                .position(|t| t.name == spec.name)
                .expect("found above"),
        };
        let tensor = given.swap_remove(position);
        let tensor_rows = check_tensor(&tensor, spec)?;
        match rows {
            Some(r) if r != tensor_rows => {
                return Err(InferError::invalid(format!(
                    "input '{}' has batch size {tensor_rows}, other inputs {r}",
                    spec.name
                )));
            }
            _ => rows = Some(tensor_rows),
        }
        tensors.push(tensor.data);
    }
    let rows = rows.unwrap_or(0);
    if rows == 0 {
        return Err(InferError::invalid(
            "the request has no rows (batch size 0)",
        ));
    }
    Ok(ValidatedInputs { rows, tensors })
}

/// An output a response carries: its position in the manifest's outputs, and whether it
/// travels as binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectedOutput {
    /// Position in the manifest's outputs.
    pub index: usize,
    /// As binary data (the binary tensor extension), else as JSON.
    pub binary: bool,
}

/// The outputs `request` asks for among `outputs` (a manifest's), in manifest order: those it
/// names, else all; each binary as its `binary_data` or the request's `binary_data_output` say.
pub fn select_outputs(
    request: &InferRequest,
    outputs: &[TensorSpec],
) -> Result<Vec<SelectedOutput>, InferError> {
    let Some(requested) = &request.outputs else {
        return Ok((0..outputs.len())
            .map(|index| SelectedOutput {
                index,
                binary: request.binary_output,
            })
            .collect());
    };
    if let Some(unknown) = requested
        .iter()
        .find(|r| !outputs.iter().any(|spec| spec.name == r.name))
    {
        let known: Vec<_> = outputs.iter().map(|s| s.name.as_str()).collect();
        return Err(InferError::invalid(format!(
            "unknown output '{}'; the model gives {known:?}",
            unknown.name
        )));
    }
    Ok(outputs
        .iter()
        .enumerate()
        .filter_map(|(index, spec)| {
            let wanted = requested.iter().find(|r| r.name == spec.name)?;
            Some(SelectedOutput {
                index,
                binary: wanted.binary.unwrap_or(request.binary_output),
            })
        })
        .collect())
}

/// Checks one tensor against its spec; returns its batch size.
fn check_tensor(tensor: &Tensor, spec: &TensorSpec) -> Result<usize, InferError> {
    let name = &spec.name;
    // Half precision widens to FP32 exactly (both are carried as f32): half the bytes to send.
    let widens = spec.datatype == DataType::Fp32
        && matches!(tensor.datatype, DataType::Fp16 | DataType::Bf16);
    if tensor.datatype != spec.datatype && !widens {
        let also = if spec.datatype == DataType::Fp32 {
            " (or FP16, BF16)"
        } else {
            ""
        };
        return Err(InferError::invalid(format!(
            "input '{name}' must be {}{also}, got {}",
            spec.datatype, tensor.datatype
        )));
    }
    let shape_ok = tensor.shape.len() == spec.shape.len()
        && tensor
            .shape
            .iter()
            .zip(&spec.shape)
            .all(|(&got, &want)| want < 0 || got as i64 == want);
    if !shape_ok {
        return Err(InferError::invalid(format!(
            "input '{name}' must have shape {:?} (-1: any batch size), got {:?}",
            spec.shape, tensor.shape
        )));
    }
    let expected = element_count(&tensor.shape).unwrap_or(usize::MAX);
    if tensor.data.len() != expected {
        return Err(InferError::invalid(format!(
            "input '{name}' has {} elements; shape {:?} needs {expected}",
            tensor.data.len(),
            tensor.shape
        )));
    }
    Ok(if spec.shape.first() == Some(&-1) {
        tensor.shape[0]
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: Vec<usize>, datatype: DataType, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            datatype,
            data,
        }
    }

    #[test]
    fn binary_requests_decode_to_the_tensors_json_ones_do() {
        let inputs = vec![
            tensor(
                "a",
                vec![1, 3],
                DataType::Fp32,
                TensorData::F32(vec![0.5, -1.0, 3.25]),
            ),
            tensor("b", vec![2], DataType::Int32, TensorData::I64(vec![-4, 9])),
            tensor(
                "c",
                vec![1],
                DataType::Bytes,
                TensorData::Bytes(vec!["x y".into()]),
            ),
        ];
        let (body, header) = encode_framed_request("b-1", &inputs, false);
        let framed = decode_framed_request(&body, Some(header), 1 << 20).unwrap();
        let json = decode_request(&encode_request("b-1", &inputs), 1 << 20).unwrap();
        assert_eq!(framed, json);
        assert_eq!(framed.id.as_deref(), Some("b-1"));
        let (body, header) = encode_framed_request("b-1", &inputs, true);
        let asking = decode_framed_request(&body, Some(header), 1 << 20).unwrap();
        assert!(asking.binary_output);
        assert_eq!(asking.inputs, json.inputs);
        // Re-framed, a request keeps everything it asks.
        let named = InferRequest {
            outputs: Some(vec![RequestedOutput {
                name: "label".into(),
                binary: Some(false),
            }]),
            ..asking
        };
        let (body, header) = reframe_request(&named);
        assert_eq!(
            decode_framed_request(&body, Some(header), 1 << 20).unwrap(),
            named
        );
    }

    #[test]
    fn bad_binary_framing_is_refused_naming_the_tensor() {
        let inputs = [tensor(
            "x",
            vec![1, 2],
            DataType::Fp32,
            TensorData::F32(vec![1.0, 2.0]),
        )];
        let (body, header) = encode_framed_request("f", &inputs, false);
        let refused = |body: &[u8], header: Option<usize>| {
            decode_framed_request(body, header, 1 << 20)
                .expect_err("refused")
                .error
        };
        let past = refused(&body, Some(body.len() + 1));
        assert!(
            past.message.contains("Inference-Header-Content-Length"),
            "{past}"
        );
        let trailing = refused(&[&body[..], b"!"].concat(), Some(header));
        assert!(
            trailing
                .message
                .contains("1 bytes after the last binary tensor"),
            "{trailing}"
        );
        let short = refused(&body[..body.len() - 1], Some(header));
        assert!(
            short
                .message
                .starts_with("tensor 'x': binary_data_size 8 is past"),
            "{short}"
        );
        let unframed = refused(&body[..header], None);
        assert!(
            unframed.message.contains("without a binary part"),
            "{unframed}"
        );
        // A size that disagrees with the shape.
        let text = String::from_utf8(body[..header].to_vec()).unwrap();
        let lying = text.replace("\"binary_data_size\":8", "\"binary_data_size\":4");
        let lying = [lying.as_bytes(), &body[header..header + 4]].concat();
        let mismatch = refused(&lying, Some(header));
        assert!(
            mismatch.message.contains("is not 2 elements of 4 bytes"),
            "{mismatch}"
        );
        for error in [past, trailing, short, unframed, mismatch] {
            assert_eq!(error.code, ErrorCode::InvalidArgument);
        }
    }

    #[test]
    fn a_bad_value_is_placed_where_it_is_in_the_body() {
        for body in [
            r#"{"id":"p","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1, 2, 1e+39]}]}"#,
            "{\n  \"id\": \"p\",\n  \"inputs\": [{\"name\": \"x\", \"shape\": [1, 3],\n    \"datatype\": \"FP32\", \"data\": [1,\n 2, 1e+39]}]\n}",
        ] {
            let error = decode_request(body.as_bytes(), 1 << 20)
                .unwrap_err()
                .error
                .message;
            let at = body.find("1e+39").unwrap();
            let line = body[..at].matches('\n').count() + 1;
            let column = at - body[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
            // serde_json places the error at the number's last character.
            let expected = format!("at line {line} column {}", column + "1e+39".len() - 1);
            assert!(error.starts_with("tensor 'x': "), "{error}");
            assert!(error.ends_with(&expected), "{error}: expected {expected}");
        }
    }

    fn digits_inputs() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 64],
        }]
    }

    #[test]
    fn parameters_must_be_objects_and_requested_outputs_are_read() {
        let ok = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],
            "parameters":{"a":1}}],"parameters":{"b":[2]},"outputs":[{"name":"label"}]}"#;
        let decoded = decode_request(ok.as_bytes(), 1 << 20).unwrap();
        let label = RequestedOutput {
            name: "label".into(),
            binary: None,
        };
        assert_eq!(decoded.outputs, Some(vec![label]));
        assert!(!decoded.binary_output);
        for bad in [
            r#"{"inputs":[],"parameters":[1]}"#,
            r#"{"inputs":[],"outputs":[{"name":"a","parameters":"x"}]}"#,
            r#"{"inputs":[],"outputs":[{"name":"a","parameters":{"binary_data":1}}]}"#,
            r#"{"inputs":[],"parameters":{"binary_data_output":"yes"}}"#,
            r#"{"inputs":[],"outputs":[{"parameters":{}}]}"#,
            r#"{"inputs":[],"outputs":null}"#,
            r#"{"id":null,"inputs":[]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":5}]}"#,
        ] {
            let error = decode_request(bad.as_bytes(), 1 << 20).unwrap_err();
            assert_eq!(error.error.code, ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn outputs_are_selected_by_name_in_manifest_order_each_binary_as_asked() {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![-1],
        };
        let outputs = [spec("probabilities"), spec("label")];
        let select = |body: &str| {
            let request = decode_request(body.as_bytes(), 1 << 20).unwrap();
            select_outputs(&request, &outputs)
        };
        let selected = |pairs: &[(usize, bool)]| {
            Ok(pairs
                .iter()
                .map(|&(index, binary)| SelectedOutput { index, binary })
                .collect::<Vec<_>>())
        };
        assert_eq!(
            select(r#"{"inputs":[]}"#),
            selected(&[(0, false), (1, false)])
        );
        let all_binary = r#"{"inputs":[],"parameters":{"binary_data_output":true}}"#;
        assert_eq!(select(all_binary), selected(&[(0, true), (1, true)]));
        let both = r#"{"inputs":[],"outputs":[{"name":"label","parameters":{"binary_data":true}},
            {"name":"probabilities"},{"name":"label"}]}"#;
        assert_eq!(select(both), selected(&[(0, false), (1, true)]));
        // An output's own binary_data overrides binary_data_output.
        let json_label = r#"{"inputs":[],"parameters":{"binary_data_output":true},
            "outputs":[{"name":"label","parameters":{"binary_data":false}}]}"#;
        assert_eq!(select(json_label), selected(&[(1, false)]));
        let error = select(r#"{"inputs":[],"outputs":[{"name":"logits"}]}"#).unwrap_err();
        assert!(error.message.contains("unknown output 'logits'"), "{error}");
    }

    fn request(body: &str) -> Result<ValidatedInputs, InferError> {
        let decoded = decode_request(body.as_bytes(), 1 << 20).map_err(|e| e.error)?;
        validate(decoded, &digits_inputs())
    }

    fn pixels(n: usize) -> String {
        vec!["1"; n].join(",")
    }

    #[test]
    fn accepts_a_valid_batch_of_two() {
        let body = format!(
            r#"{{"id":"7","inputs":[{{"name":"input","shape":[2,64],"datatype":"FP32","data":[{}]}}]}}"#,
            pixels(128)
        );
        let request = decode_request(body.as_bytes(), 1 << 20).unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        let valid = validate(request, &digits_inputs()).unwrap();
        assert_eq!(valid.rows, 2);
        assert_eq!(valid.tensors[0].len(), 128);
    }

    #[test]
    fn rejects_malformed_and_empty_bodies_with_invalid_argument() {
        for body in [
            "{\"inputs\": [",
            "",
            "   ",
            "[]",
            "{\"inputs\": 3}",
            "not json",
        ] {
            let err = request(body).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{body:?}: {err}");
        }
    }

    #[test]
    fn rejects_oversized_body_with_resource_exhausted_before_parsing() {
        // Not JSON at all: the size check must come first.
        let err = decode_request(&[b'x'; 101], 100).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::ResourceExhausted);
    }

    #[test]
    fn rejects_wrong_name_datatype_shape_and_length() {
        let cases = [
            (
                r#"{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[@]}]}"#,
                "unknown input",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,64],"datatype":"INT32","data":[@]}]}"#,
                "must be FP32",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[64],"datatype":"FP32","data":[@]}]}"#,
                "must have shape",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,8,8],"datatype":"FP32","data":[@]}]}"#,
                "must have shape",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2,64],"datatype":"FP32","data":[@]}]}"#,
                "elements",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[0,64],"datatype":"FP32","data":[]}]}"#,
                "no rows",
            ),
            (r#"{"inputs":[]}"#, "missing input"),
            (
                r#"{"inputs":[{"name":"input","shape":[-1,64],"datatype":"FP32","data":[@]}]}"#,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP99","data":[@]}]}"#,
                "malformed",
            ),
        ];
        for (template, expected) in cases {
            let body = template.replace('@', &pixels(64));
            let err = request(&body).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{template}");
            assert!(err.message.contains(expected), "{template}: {err}");
        }
    }

    #[test]
    fn rejects_non_finite_fp32_with_invalid_argument() {
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[1e40,{}]}}]}}"#,
            pixels(63)
        );
        let err = decode_request(body.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(err.error.code, ErrorCode::InvalidArgument);
        assert!(err.error.message.contains("finite"), "{err}");
        assert_eq!(err.id, None);
        let with_id = body.replacen('{', r#"{"id":"n1","#, 1);
        assert_eq!(
            decode_request(with_id.as_bytes(), 1 << 20)
                .unwrap_err()
                .id
                .as_deref(),
            Some("n1")
        );
    }

    #[test]
    fn an_fp32_input_takes_half_precision_and_nothing_else() {
        let digit = |datatype: &str| {
            format!(
                r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"{datatype}","data":[{}]}}]}}"#,
                pixels(64)
            )
        };
        for half in ["FP16", "BF16"] {
            let inputs = request(&digit(half)).unwrap();
            assert_eq!(inputs.tensors[0], TensorData::F32(vec![1.0; 64]), "{half}");
        }
        let refused = request(&digit("FP64")).unwrap_err();
        assert!(
            refused
                .message
                .contains("must be FP32 (or FP16, BF16), got FP64"),
            "{refused}"
        );
    }

    #[test]
    fn rejects_an_input_given_twice() {
        let one = format!(
            r#"{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}"#,
            pixels(64)
        );
        let err = request(&format!(r#"{{"inputs":[{one},{one}]}}"#)).unwrap_err();
        assert!(err.message.contains("twice"), "{err}");
    }

    #[test]
    fn replies_round_trip_through_encode_and_decode() {
        let response = InferResponse {
            id: "9".into(),
            model_name: "digits".into(),
            model_version: "1".into(),
            outputs: vec![
                tensor(
                    "probabilities",
                    vec![1, 2],
                    DataType::Fp32,
                    TensorData::F32(vec![0.25, 0.75]),
                ),
                tensor(
                    "label",
                    vec![2],
                    DataType::Int64,
                    TensorData::I64(vec![3, 4]),
                ),
            ],
            binary: vec![false, false],
        };
        let (body, header_length) = encode_reply(&Ok(response.clone()));
        assert_eq!(header_length, None);
        assert_eq!(decode_reply(&body).unwrap(), Reply::Ok(response.clone()));
        // The second output binary: the header names its size, its 16 bytes follow.
        let mixed = InferResponse {
            binary: vec![false, true],
            ..response
        };
        let (body, header_length) = encode_reply(&Ok(mixed.clone()));
        let header_length = header_length.expect("framed");
        assert_eq!(body.len(), header_length + 16);
        let header = std::str::from_utf8(&body[..header_length]).unwrap();
        assert!(
            header.ends_with(
                r#"{"name":"label","shape":[2],"datatype":"INT64","parameters":{"binary_data_size":16}}]}"#
            ),
            "{header}"
        );
        assert_eq!(body[header_length..][..8], 3i64.to_le_bytes());
        let decoded = decode_framed_reply(&body, Some(header_length)).unwrap();
        assert_eq!(decoded, Reply::Ok(mixed));
        let trailing = [&body[..], b"!"].concat();
        let error = decode_framed_reply(&trailing, Some(header_length)).unwrap_err();
        assert!(
            error.contains("1 bytes after the last binary tensor"),
            "{error}"
        );
        let error = ErrorResponse::new("9", &InferError::not_found("no model 'x'"));
        let (body, header_length) = encode_reply(&Err(error.clone()));
        assert_eq!(header_length, None);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"9","error":"no model 'x'","code":"NOT_FOUND"}"#
        );
        assert_eq!(decode_reply(&body).unwrap(), Reply::Err(error));
    }
}
