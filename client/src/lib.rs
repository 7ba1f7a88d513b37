//! Ember's client side: the wire protocol ([`protocol`]), the broker transports ([`transport`])
//! and the client library (this crate's root), without the worker: no Burn, no model store, no
//! HTTP server. The `ember` worker crate builds on it.
//!
//! Talking to Ember from an application: realtime inference (RPC with a deadline, retried over
//! connection losses) and batch jobs (requests to the batch lane, answers kept in the job's own
//! queue until the submitter stores them, so a submitter can stop and continue).
//!
//! Requests carry stable message ids: a request sent again (a retry after a lost connection, a
//! resumed batch job) is the same request, and a worker that answered it recently sends the
//! same answer again instead of computing it twice.
//!
//! ```no_run
//! use ember_client::{BatchOptions, Client};
//! use ember_client::protocol::{DataType, Tensor, TensorData};
//! use ember_client::transport::amqp::{AmqpConfig, AmqpTransport};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f");
//! let client = Client::new(AmqpTransport::connect(broker).await?);
//!
//! // Realtime: one 8×8 digit, answered within the default 30 s deadline.
//! let pixels = Tensor {
//!     name: "input".into(),
//!     shape: vec![1, 64],
//!     datatype: DataType::Fp32,
//!     data: TensorData::F32(vec![0.0; 64]),
//! };
//! let response = client.infer("digits", &[pixels]).await?;
//! println!("label {:?}", response.outputs[1].data);
//!
//! // Batch: a stream of OIP request bodies; answers arrive in any order, tagged by index.
//! let bodies = (0..1000).map(|i| format!(r#"{{"id":"{i}","inputs":[...]}}"#).into());
//! let mut job = client
//!     .submit_batch("digits", futures::stream::iter(bodies), BatchOptions::default())
//!     .await?;
//! while let Some(result) = job.next_result().await {
//!     println!("{}: {}", result.index, String::from_utf8_lossy(&result.message().body));
//!     result.ack().await?; // stored: the job's queue may forget it
//!     if job.progress().answered == 1000 {
//!         break;
//!     }
//! }
//! job.finish().await?;
//! # Ok(()) }
//! ```

use crate::chain::Chain;
use crate::protocol::{
    ErrorResponse, InferResponse, Lane, Reply, Tensor, decode_framed_reply, encode_framed_request,
    encode_request,
};
use crate::transport::{ClientTransport, InboxSender, Message, Properties, TransportError, queues};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod batch;
pub mod chain;
pub mod file;
pub mod protocol;
pub mod secret;
pub mod send;
pub mod transport;

pub use batch::{
    BatchJob, BatchOptions, BatchProgress, BatchResult, BatchSender, DEFAULT_JOB_EXPIRY,
    DEFAULT_WINDOW,
};

/// How long [`Client::infer`] waits for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The model's request queue does not exist: no worker has ever served the model.
    #[error(
        "no queue {queue}: no worker serves {model} (or run `ember queues declare --model {model}`)"
    )]
    NoQueue {
        /// The model asked.
        model: String,
        /// The queue that is missing.
        queue: String,
    },
    /// No answer before the deadline (the request may still be computed: its worker answers
    /// `DEADLINE_EXCEEDED` without computing if it takes it after the deadline).
    #[error("no answer from {model} within {:.1} s", .waited.as_secs_f64())]
    Timeout {
        /// The model asked.
        model: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The broker could not be reached until the deadline, or refused.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The worker answered with an error.
    #[error("{}: {}", .0.code, .0.error)]
    Inference(ErrorResponse),
    /// The answer is not an OIP response.
    #[error("unreadable reply: {0}")]
    BadReply(String),
    /// A batch job id that cannot name a queue.
    #[error("job id {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    BadJobId(String),
    /// The answer a claim check names cannot be fetched, or is not the one it describes.
    #[error("claim check {url}: {reason}")]
    ClaimCheck {
        /// The answer's URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where claim-checked answers are read from: the store the worker puts large answers in
/// (`ember_client` names no storage service; the `ember` crate implements this for Azure Blob
/// and local directories).
#[async_trait::async_trait]
pub trait ClaimStore: Send + Sync + std::fmt::Debug {
    /// The object at `url` (a reply's `claim_check`).
    async fn fetch(&self, url: &str) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;
}

/// Fetches the answer a claim-check reply (`properties.claim_check` set) names from `store`,
/// checks it against the reply's sha256, and returns it as the reply it stands for: its body
/// and framing, the reply's other properties.
pub async fn redeem(reply: &Message, store: &dyn ClaimStore) -> Result<Message, ClientError> {
    #[derive(serde::Deserialize)]
    struct Claim {
        claim_check: String,
        sha256: String,
        inference_header_content_length: Option<u64>,
    }
    let claim: Claim =
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::ClaimCheck {
            url: reply.properties.claim_check.clone().unwrap_or_default(),
            reason: format!("unreadable claim check: {e}"),
        })?;
    let failed = |reason: String| ClientError::ClaimCheck {
        url: claim.claim_check.clone(),
        reason,
    };
    let answer = store
        .fetch(&claim.claim_check)
        .await
        .map_err(|e| failed(Chain(&*e).to_string()))?;
    let sha256 = protocol::sha256_hex(&answer);
    if sha256 != claim.sha256 {
        return Err(failed(format!(
            "sha256 {sha256}, the claim says {}",
            claim.sha256
        )));
    }
    Ok(Message {
        body: answer,
        properties: Properties {
            claim_check: None,
            header_length: claim.inference_header_content_length,
            ..reply.properties.clone()
        },
    })
}

/// Options of one realtime call.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// Version or alias (default: the worker's, `production`).
    pub version: Option<String>,
    /// Longest to wait; also sent as the request's deadline.
    pub timeout: Duration,
    /// Lane (realtime unless the caller knows better).
    pub lane: Lane,
    /// Message id; the same id with the same body is the same request (default: a fresh one).
    pub id: Option<String>,
    /// The body is binary-framed: a JSON header of this many bytes, then binary tensors
    /// ([`protocol::encode_framed_request`]); `None`: JSON. [`Client::call`] only: `infer`
    /// encodes its own body.
    pub header_length: Option<usize>,
    /// [`Client::infer_with`] sends the inputs and asks for the outputs as binary data (the
    /// binary tensor extension) instead of JSON numbers.
    pub binary: bool,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            version: None,
            timeout: DEFAULT_TIMEOUT,
            lane: Lane::Realtime,
            id: None,
            header_length: None,
            binary: false,
        }
    }
}

/// An Ember client over any [`ClientTransport`]; share it (it is cheap to call concurrently: every
/// call goes through one RPC inbox, answers routed by correlation id).
pub struct Client {
    transport: Arc<dyn ClientTransport>,
    rpc: tokio::sync::Mutex<Option<Arc<Rpc>>>,
    ids: IdSource,
}

impl Client {
    /// A client over `transport`.
    pub fn new(transport: impl ClientTransport) -> Self {
        Self::from_arc(Arc::new(transport))
    }

    /// A client over a shared transport.
    pub fn from_arc(transport: Arc<dyn ClientTransport>) -> Self {
        Self {
            transport,
            rpc: tokio::sync::Mutex::new(None),
            ids: IdSource::new(),
        }
    }

    /// The transport it talks over.
    pub fn transport(&self) -> &Arc<dyn ClientTransport> {
        &self.transport
    }

    /// Asks `model` (production version) for `inputs` and waits for the answer.
    pub async fn infer(
        &self,
        model: &str,
        inputs: &[Tensor],
    ) -> Result<InferResponse, ClientError> {
        self.infer_with(model, inputs, &InferOptions::default())
            .await
    }

    /// [`infer`](Self::infer) with options.
    pub async fn infer_with(
        &self,
        model: &str,
        inputs: &[Tensor],
        options: &InferOptions,
    ) -> Result<InferResponse, ClientError> {
        let id = options.id.clone().unwrap_or_else(|| self.ids.next());
        let (body, header_length) = if options.binary {
            let (body, length) = encode_framed_request(&id, inputs, true);
            (body, Some(length))
        } else {
            (encode_request(&id, inputs), None)
        };
        let options = InferOptions {
            id: Some(id),
            header_length,
            ..options.clone()
        };
        let reply = self.call(model, body.into(), &options).await?;
        let header_length = reply.properties.header_length.map(|n| n as usize);
        match decode_framed_reply(&reply.body, header_length) {
            Ok(Reply::Ok(response)) => Ok(response),
            Ok(Reply::Err(error)) => Err(ClientError::Inference(error)),
            Err(e) => Err(ClientError::BadReply(e)),
        }
    }

    /// Sends an OIP request body to `model` and waits for the reply message (a response or an
    /// error body; `properties.error_code` tells which). Connection losses are retried with
    /// the same message id until the deadline.
    pub async fn call(
        &self,
        model: &str,
        body: Bytes,
        options: &InferOptions,
    ) -> Result<Message, ClientError> {
        let started = Instant::now();
        let deadline = started + options.timeout;
        let queue = queues::requests(model, options.lane);
        let id = options.id.clone().unwrap_or_else(|| self.ids.next());
        let message = Message {
            body,
            properties: Properties {
                message_id: Some(id.clone()),
                correlation_id: Some(id.clone()),
                model: Some(model.to_owned()),
                version: options.version.clone(),
                lane: Some(options.lane),
                header_length: options.header_length.map(|n| n as u64),
                ..Properties::default()
            }
            .with_deadline_in(options.timeout)
            .sent_now(),
        };
        let timeout = || ClientError::Timeout {
            model: model.to_owned(),
            waited: started.elapsed(),
        };
        let mut backoff = FIRST_BACKOFF;
        let mut unreachable = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(unreachable.map_or_else(timeout, ClientError::Transport));
            }
            let attempt = async {
                let rpc = self.rpc().await?;
                let Some(answer) = rpc.expect(&id) else {
                    return Ok(None);
                };
                if let Err(e) = rpc.sender.send(&queue, message.clone()).await {
                    rpc.forget(&id);
                    if matches!(e, TransportError::Unavailable { .. }) {
                        self.discard(&rpc).await;
                    }
                    return Err(e);
                }
                match tokio::time::timeout(remaining, answer).await {
                    Ok(Ok(reply)) => Ok(Some(reply)),
                    Ok(Err(_lost)) => Ok(None),
                    Err(_late) => {
                        rpc.forget(&id);
                        Ok(None)
                    }
                }
            };
            match attempt.await {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) if Instant::now() >= deadline => return Err(timeout()),
                Ok(None) => {
                    tracing::debug!(%id, "the inbox was lost before the answer; sending again");
                    unreachable = None;
                }
                Err(TransportError::Unroutable(queue)) => {
                    return Err(ClientError::NoQueue {
                        model: model.to_owned(),
                        queue,
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %Chain(&e), %id, "cannot send; retrying");
                    unreachable = Some(e);
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(backoff.min(remaining)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Whether the broker can be reached now (the RPC inbox is open, or opens).
    pub async fn connected(&self) -> bool {
        self.rpc().await.is_ok()
    }

    /// The open RPC inbox, opening one if there is none or it was lost.
    async fn rpc(&self) -> Result<Arc<Rpc>, TransportError> {
        let mut current = self.rpc.lock().await;
        if let Some(rpc) = current.as_ref().filter(|rpc| rpc.is_open()) {
            return Ok(rpc.clone());
        }
        let rpc = Arc::new(Rpc::open(self.transport.as_ref()).await?);
        *current = Some(rpc.clone());
        Ok(rpc)
    }

    /// Forgets `rpc` (a send through it failed), so the next call opens another inbox.
    async fn discard(&self, rpc: &Arc<Rpc>) {
        let mut current = self.rpc.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, rpc)) {
            *current = None;
        }
    }
}

/// One RPC inbox and the task routing its answers to the calls waiting for them.
struct Rpc {
    sender: Arc<dyn InboxSender>,
    waiting: Arc<Mutex<Waiting>>,
    router: tokio::task::JoinHandle<()>,
}

/// Calls waiting for their answer, by correlation id; `None` once the inbox is lost.
type Waiting = Option<HashMap<String, oneshot::Sender<Message>>>;

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    // Each operation is one insert, remove or take.
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Rpc {
    async fn open(transport: &dyn ClientTransport) -> Result<Self, TransportError> {
        let inbox = transport.inbox().await?;
        let waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let router = tokio::spawn({
            let waiting = waiting.clone();
            let mut replies = inbox.replies;
            async move {
                while let Some(reply) = replies.next().await {
                    let call =
                        reply.properties.correlation_id.as_deref().and_then(|id| {
                            lock(&waiting).as_mut().and_then(|calls| calls.remove(id))
                        });
                    match call {
                        Some(call) => {
                            let _ = call.send(reply);
                        }
                        None => tracing::debug!(
                            correlation_id = ?reply.properties.correlation_id,
                            "an answer nobody waits for (late, or a duplicate); dropped"
                        ),
                    }
                }
                // Lost: the waiting calls see their answer channel close and send again.
                lock(&waiting).take();
            }
        });
        Ok(Self {
            sender: inbox.sender,
            waiting,
            router,
        })
    }

    fn is_open(&self) -> bool {
        lock(&self.waiting).is_some()
    }

    /// Registers a call waiting for the answer correlated by `id`; `None` if the inbox is lost.
    fn expect(&self, id: &str) -> Option<oneshot::Receiver<Message>> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiting).as_mut()?.insert(id.to_owned(), sender);
        Some(receiver)
    }

    fn forget(&self, id: &str) {
        if let Some(calls) = lock(&self.waiting).as_mut() {
            calls.remove(id);
        }
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        self.router.abort();
    }
}

/// Fresh message and job ids: a random prefix per client and a counter.
struct IdSource {
    prefix: String,
    next: AtomicU64,
}

impl IdSource {
    fn new() -> Self {
        Self {
            prefix: format!("{:016x}", random()),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn job(&self) -> String {
        format!("{:016x}", random())
    }
}

/// 64 random bits (the standard library's per-process random hash keys, with the time).
fn random() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
}
