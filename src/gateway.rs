//! `ember gateway`: the Open Inference Protocol V2 REST API in front of the queues, so V2
//! clients (KServe and Triton client libraries, curl) reach workers that scale to zero.
//!
//! Metadata and validation come from the model repository (manifests only, cached for
//! [`GatewayConfig::metadata_ttl`]): unknown models are 404 and invalid requests 400 without
//! waking a worker. A valid request goes to the model's realtime queue unchanged (its bytes are
//! not re-encoded) through one RPC inbox, and its reply comes back as the response: status from
//! the reply's error code, body as the worker wrote it. The OpenAPI document is
//! `docs/gateway.openapi.yaml`, served at `GET /v2/openapi.yaml`.

use crate::client::chain::Chain;
use crate::client::{Client, ClientError, InferOptions};
use crate::protocol::{ErrorCode, Lane};
use crate::store::{DEFAULT_ALIAS, Manifest, ModelName, Repository, StoreError, Version};
use crate::transport::{TransportError, queues};
use crate::worker::{RequestLimits, admit};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The OpenAPI document of the routes below.
pub const OPENAPI: &str = include_str!("../docs/gateway.openapi.yaml");

/// The header of the V2 binary tensor data extension.
const BINARY_HEADER: &str = "inference-header-content-length";

/// Gateway settings.
#[derive(Debug, Clone, Copy)]
pub struct GatewayConfig {
    /// Longest a request waits for its answer (then 504); also its deadline on the queue.
    pub timeout: Duration,
    /// What one request may be, as a worker checks it: larger bodies are refused (413) unread.
    pub limits: RequestLimits,
    /// How long a model's manifest is reused before the repository is read again.
    pub metadata_ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            timeout: crate::client::DEFAULT_TIMEOUT,
            limits: RequestLimits::default(),
            metadata_ttl: Duration::from_secs(10),
        }
    }
}

/// Manifests read, by model and selector, with when they were read.
type Manifests = HashMap<(String, String), (Instant, Arc<Manifest>)>;

/// The gateway's state: a client of the queues and the repository's manifests.
pub struct Gateway {
    client: Client,
    repository: Repository,
    config: GatewayConfig,
    manifests: Mutex<Manifests>,
}

impl Gateway {
    /// A gateway asking workers through `client`, describing models from `repository`.
    pub fn new(client: Client, repository: Repository, config: GatewayConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            repository,
            config,
            manifests: Mutex::default(),
        })
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v2", get(server_metadata))
            .route(
                "/v2/health/live",
                get(|| async { Json(json!({ "live": true })) }),
            )
            .route("/v2/health/ready", get(server_ready))
            .route("/v2/openapi.yaml", get(openapi))
            .route("/v2/models/{model}", get(model_metadata))
            .route("/v2/models/{model}/ready", get(model_ready))
            .route("/v2/models/{model}/infer", post(infer))
            .route("/v2/models/{model}/versions/{version}", get(model_metadata))
            .route(
                "/v2/models/{model}/versions/{version}/ready",
                get(model_ready),
            )
            .route("/v2/models/{model}/versions/{version}/infer", post(infer))
            .fallback(|| async { error(ErrorCode::NotFound, "no such route") })
            .with_state(self.clone())
    }

    /// The manifest `selector` (default production) of `model` names, from the cache while fresh.
    async fn manifest(
        &self,
        model: &str,
        selector: Option<&str>,
    ) -> Result<Arc<Manifest>, Response> {
        let selector = selector.unwrap_or(DEFAULT_ALIAS);
        let key = (model.to_owned(), selector.to_owned());
        if let Some((at, manifest)) = self.lock().get(&key)
            && at.elapsed() < self.config.metadata_ttl
        {
            return Ok(manifest.clone());
        }
        let not_found = |what: String| error(ErrorCode::NotFound, what);
        let name =
            ModelName::parse(model).map_err(|e| not_found(format!("model {model:?}: {e}")))?;
        let selector = Version::parse(selector)
            .map_err(|e| not_found(format!("version {selector:?}: {e}")))?;
        let found = async {
            let version = self.repository.resolve(&name, &selector).await?;
            self.repository.manifest(&name, &version).await
        };
        let manifest = Arc::new(found.await.map_err(|e| match e {
            StoreError::NotFound(message) => not_found(message),
            e => error(ErrorCode::Internal, Chain(&e).to_string()),
        })?);
        self.lock().insert(key, (Instant::now(), manifest.clone()));
        Ok(manifest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Manifests> {
        // Each operation is one get or insert.
        self.manifests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A V2 error response: `{"error": "...", "code": "..."}` with `status`.
/// An error answer: its HTTP status is always the code's ([`status_of`]).
fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into(), "code": code.as_str() });
    (status_of(code), Json(body)).into_response()
}

/// The HTTP status of an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "ember",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn server_ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let ready = gateway.client.connected().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

/// `{model}` and, on versioned routes, `{version}`.
#[derive(serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

async fn model_metadata(
    State(gateway): State<Arc<Gateway>>,
    Path(path): Path<ModelPath>,
) -> Response {
    let manifest = match gateway.manifest(&path.model, path.version.as_deref()).await {
        Ok(manifest) => manifest,
        Err(response) => return response,
    };
    let versions = match ModelName::parse(&path.model) {
        Ok(name) => gateway.repository.versions(&name).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Json(json!({
        "name": manifest.name,
        "versions": versions,
        "platform": "ember-burn",
        "inputs": manifest.inputs,
        "outputs": manifest.outputs,
    }))
    .into_response()
}

/// Ready when the version exists and a worker consumes the model's realtime queue now (with
/// workers scaled to zero, a request still gets an answer once KEDA starts one: not ready
/// says it waits for that). Where the broker cannot count consumers, the version decides.
async fn model_ready(State(gateway): State<Arc<Gateway>>, Path(path): Path<ModelPath>) -> Response {
    let manifest = match gateway.manifest(&path.model, path.version.as_deref()).await {
        Ok(manifest) => manifest,
        Err(response) => return response,
    };
    let queue = queues::requests(&path.model, Lane::Realtime);
    let unready = match gateway.client.transport().consumers(&queue).await {
        Ok(Some(0)) => Some(format!("no worker consumes {queue} now")),
        Ok(_) => None,
        Err(TransportError::Unroutable(_)) => {
            Some(format!("no queue {queue}: no worker serves {}", path.model))
        }
        Err(e) => Some(Chain(&e).to_string()),
    };
    match unready {
        None => Json(json!({ "name": manifest.name, "ready": true })).into_response(),
        Some(reason) => {
            let body = json!({ "name": manifest.name, "ready": false, "reason": reason });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn infer(
    State(gateway): State<Arc<Gateway>>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The binary tensor data extension: a JSON header of this many bytes, then the tensors.
    let header_length = match headers
        .get(BINARY_HEADER)
        .map(|v| v.to_str().map(str::parse))
    {
        None => None,
        Some(Ok(Ok(length))) => Some(length),
        Some(_) => {
            let message = "Inference-Header-Content-Length is not a number of bytes";
            return error(ErrorCode::InvalidArgument, message);
        }
    };
    let limit = gateway.config.limits.max_request_bytes;
    let too_large = || {
        let message = format!("the request is over the {limit}-byte limit");
        error(ErrorCode::ResourceExhausted, message)
    };
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return too_large();
    };
    let body = match headers.get(header::CONTENT_ENCODING).cloned() {
        None => body,
        // Inflating takes milliseconds for large bodies: off the async threads.
        Some(coding) => {
            match tokio::task::spawn_blocking(move || encoding::decode(&coding, body, limit)).await
            {
                Ok(Ok(body)) => body,
                Ok(Err(encoding::Refused::TooLarge)) => return too_large(),
                Ok(Err(encoding::Refused::Bad(message))) => {
                    return error(ErrorCode::InvalidArgument, message);
                }
                Err(e) => return error(ErrorCode::Internal, format!("inflating failed: {e}")),
            }
        }
    };
    let manifest = match gateway.manifest(&path.model, path.version.as_deref()).await {
        Ok(manifest) => manifest,
        Err(response) => return response,
    };
    if let Err((e, _)) = admit(&body, header_length, &manifest, &gateway.config.limits) {
        return error(e.code, e.message);
    }
    let options = InferOptions {
        version: path.version,
        timeout: gateway.config.timeout,
        header_length,
        ..InferOptions::default()
    };
    match gateway.client.call(&path.model, body, &options).await {
        Ok(reply) => {
            let status = reply
                .properties
                .error_code
                .map_or(StatusCode::OK, status_of);
            let (body, content_encoding) =
                match encoding::accepted(headers.get(header::ACCEPT_ENCODING)) {
                    None => (reply.body, None),
                    Some(coding) => {
                        let body = reply.body;
                        let compressed =
                            tokio::task::spawn_blocking(move || encoding::encode(coding, &body));
                        match compressed.await {
                            Ok(body) => (body, Some(coding.header())),
                            Err(e) => {
                                let message = format!("compressing the answer failed: {e}");
                                return error(ErrorCode::Internal, message);
                            }
                        }
                    }
                };
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            let content_type = match reply.properties.header_length {
                Some(length) => {
                    headers.insert(BINARY_HEADER, HeaderValue::from(length));
                    "application/octet-stream"
                }
                None => "application/json",
            };
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Some(content_encoding) = content_encoding {
                headers.insert(header::CONTENT_ENCODING, content_encoding);
            }
            response
        }
        Err(ClientError::Timeout { waited, .. }) => error(
            ErrorCode::DeadlineExceeded,
            format!(
                "no answer within {:.1} s (are workers for {} running?)",
                waited.as_secs_f64(),
                path.model
            ),
        ),
        Err(e @ ClientError::NoQueue { .. }) => error(ErrorCode::NotFound, e.to_string()),
        Err(e) => error(ErrorCode::Internal, Chain(&e).to_string()),
    }
}

/// `Content-Encoding` of requests and `Accept-Encoding` of responses: gzip and deflate (zlib), as
/// Triton takes and gives them.
mod encoding {
    use axum::http::HeaderValue;
    use bytes::Bytes;
    use flate2::Compression;
    use std::io::{Read, Write};

    /// A compressed body that cannot be taken.
    pub enum Refused {
        /// It inflates past the request limit.
        TooLarge,
        /// Its encoding is unknown or its data corrupt.
        Bad(String),
    }

    /// A response compression.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Coding {
        /// gzip.
        Gzip,
        /// deflate: zlib-wrapped, as HTTP means it.
        Deflate,
    }

    impl Coding {
        /// Its `Content-Encoding`.
        pub fn header(self) -> HeaderValue {
            HeaderValue::from_static(match self {
                Self::Gzip => "gzip",
                Self::Deflate => "deflate",
            })
        }
    }

    /// `body` inflated as `content_encoding` says, refused once past `limit` bytes.
    pub fn decode(
        content_encoding: &HeaderValue,
        body: Bytes,
        limit: usize,
    ) -> Result<Bytes, Refused> {
        let coding = content_encoding
            .to_str()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let reader: Box<dyn Read> = match coding.as_str() {
            "" | "identity" => return Ok(body),
            "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(&body[..])),
            "deflate" => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
            other => {
                return Err(Refused::Bad(format!(
                    "Content-Encoding {other:?}: use gzip, deflate or identity"
                )));
            }
        };
        let mut inflated = Vec::new();
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| Refused::Bad(format!("the {coding} body does not inflate: {e}")))?;
        if inflated.len() > limit {
            return Err(Refused::TooLarge);
        }
        Ok(inflated.into())
    }

    /// The compression `accept_encoding` asks for: gzip or deflate, the first listed that it
    /// does not refuse with `q=0`.
    pub fn accepted(accept_encoding: Option<&HeaderValue>) -> Option<Coding> {
        let value = accept_encoding?.to_str().ok()?;
        value.split(',').find_map(|entry| {
            let mut parts = entry.split(';');
            let coding = match parts.next()?.trim().to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                _ => return None,
            };
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    == Some(0.0)
            });
            (!refused).then_some(coding)
        })
    }

    /// `body` compressed with `coding`.
    pub fn encode(coding: Coding, body: &[u8]) -> Bytes {
        let out = Vec::with_capacity(body.len() / 2);
        let out = match coding {
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, Compression::fast());
                encoder.write_all(body).and_then(|()| encoder.finish())
            }
            Coding::Deflate => {
                let mut encoder = flate2::write::ZlibEncoder::new(out, Compression::fast());
                encoder.write_all(body).and_then(|()| encoder.finish())
            }
        };
        out.expect("writes to memory").into()
    }
}
