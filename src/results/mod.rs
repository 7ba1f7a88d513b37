//! Publishing results: the response (or error) goes to `reply_to`, else to the model's result
//! queue, and only once the transport has confirmed it is the request's delivery acked.

use crate::client::chain::Chain;
use crate::protocol::{
    ErrorCode, ErrorResponse, InferError, InferResponse, Lane, SelectedOutput, Tensor, TensorData,
    encode_reply,
};
use crate::store::{Manifest, ModelStore, StoreError, sha256_hex};
use crate::telemetry::metrics::ModelMetrics;
use crate::transport::{Delivery, Message, Properties, Transport, TransportError, queues};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

/// Redeliveries after which a request that keeps failing internally is dead-lettered.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 3;

/// The outcome of one request.
pub type Outcome = Result<Vec<TensorData>, InferError>;

/// Builds the response for `outputs` (manifest order, `rows` rows each): the `selected` ones
/// (in manifest order too), each JSON or binary as selected.
pub fn response(
    manifest: &Manifest,
    id: String,
    outputs: Vec<TensorData>,
    rows: usize,
    selected: &[SelectedOutput],
) -> InferResponse {
    let mut selected = selected.iter().peekable();
    let (outputs, binary) = manifest
        .outputs
        .iter()
        .zip(outputs)
        .enumerate()
        .filter_map(|(index, (spec, data))| {
            let wanted = selected.next_if(|wanted| wanted.index == index)?;
            let tensor = Tensor {
                name: spec.name.clone(),
                shape: spec
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { rows } else { d as usize })
                    .collect(),
                datatype: spec.datatype,
                data,
            };
            Some((tensor, wanted.binary))
        })
        .unzip();
    InferResponse {
        id,
        model_name: manifest.name.to_string(),
        model_version: manifest.version.to_string(),
        outputs,
        binary,
    }
}

/// Publishes answers and settles their deliveries; remembers the answers it published
/// recently, so a request that comes again (a redelivery whose ack was lost, or a client
/// sending the same request again) is answered without computing it twice.
#[derive(Clone)]
pub struct Publisher {
    transport: Arc<dyn Transport>,
    max_redeliveries: u32,
    answered: Arc<RecentAnswers>,
    claim_checks: Option<ClaimChecks>,
}

/// Where answers larger than their request's `ember-blob-threshold` go: a blob store (or
/// directory) and the address that names it in claim-check URLs.
#[derive(Clone)]
pub struct ClaimChecks {
    store: Arc<dyn ModelStore>,
    address: String,
}

impl ClaimChecks {
    /// Answers stored in `store`, which `address` (`az://...` or a directory) names.
    pub fn new(store: Arc<dyn ModelStore>, address: impl Into<String>) -> Self {
        let address = address.into().trim_end_matches('/').to_owned();
        Self { store, address }
    }

    /// Stores `body`, `response`'s encoding (framed when `header_length` is given), under its
    /// sha256; returns the claim-check body (`id`, `model_name`, `model_version`, `claim_check`
    /// URL, `bytes`, `sha256`, and for a framed body `inference_header_content_length`) and the
    /// URL.
    async fn check_in(
        &self,
        response: &InferResponse,
        body: Vec<u8>,
        header_length: Option<usize>,
    ) -> Result<(Vec<u8>, String), StoreError> {
        let (bytes, sha256) = (body.len(), sha256_hex(&body));
        let extension = if header_length.is_some() {
            "bin"
        } else {
            "json"
        };
        let key = format!("results/{}/{sha256}.{extension}", response.model_name);
        self.store.put(&key, body.into()).await?;
        let url = format!("{}/{key}", self.address);
        let mut claim = serde_json::json!({
            "id": response.id,
            "model_name": response.model_name,
            "model_version": response.model_version,
            "claim_check": url,
            "bytes": bytes,
            "sha256": sha256,
        });
        if let Some(length) = header_length {
            claim["inference_header_content_length"] = length.into();
        }
        Ok((claim.to_string().into_bytes(), url))
    }
}

/// Answers remembered per worker: at most this many...
pub const ANSWERED_WINDOW: usize = 65_536;
/// ...and at most this many bytes of answer bodies.
pub const ANSWERED_BYTES: usize = 64 << 20;

impl Publisher {
    /// Answers over `transport`; internal failures are retried `max_redeliveries` times.
    pub fn new(transport: Arc<dyn Transport>, max_redeliveries: u32) -> Self {
        Self {
            transport,
            max_redeliveries,
            answered: Arc::new(RecentAnswers::new(ANSWERED_WINDOW, ANSWERED_BYTES)),
            claim_checks: None,
        }
    }

    /// Stores answers over their request's `ember-blob-threshold` in `claim_checks` (without
    /// it, every answer goes in its message).
    pub fn with_claim_checks(mut self, claim_checks: ClaimChecks) -> Self {
        self.claim_checks = Some(claim_checks);
        self
    }

    /// Redeliveries after which a request is dead-lettered instead of computed again.
    pub fn max_redeliveries(&self) -> u32 {
        self.max_redeliveries
    }

    /// The answer this worker published recently for the same request as `delivery`: same
    /// message id, model, version selector and body.
    pub fn answered(&self, delivery: &Delivery) -> Option<Answer> {
        let id = delivery.message.properties.message_id.as_deref()?;
        self.answered
            .get(id, self.answered.fingerprint(&delivery.message))
    }

    /// Answers `delivery` with `answer`, to where it asks for it now (a client's new reply
    /// inbox, or the result queue again), then acks it: every delivery gets an answer, and a
    /// consumer sees a redelivered request's answer twice at worst (same message id).
    pub async fn replay(&self, model: &ModelMetrics, delivery: Delivery, answer: Answer) {
        model.deduplicated();
        let destination = destination(model.name(), &delivery.message.properties);
        let mut reply = answer.reply;
        reply.properties.correlation_id = delivery
            .message
            .properties
            .correlation_id
            .clone()
            .or(reply.properties.correlation_id);
        if let Err(e) = self.transport.publish(&destination, reply).await {
            let request_id = delivery.message.properties.message_id.as_deref();
            tracing::warn!(request_id, error = %Chain(&e), %destination, "publishing a remembered answer failed; requeueing the request");
            if let Err(e) = delivery.settle.requeue().await {
                tracing::warn!(error = %Chain(&e), "requeue failed; the broker will redeliver");
            }
            return;
        }
        if let Err(e) = delivery.settle.ack().await {
            tracing::warn!(error = %Chain(&e), "acking a duplicate failed; the broker will redeliver");
        }
    }

    /// Answers `delivery` (from `lane`) for `model` and settles it, counting the outcome in
    /// `model`'s metrics: publish the reply, then ack. An internal
    /// failure is requeued (no reply) until `max_redeliveries`, then answered and
    /// dead-lettered. If publishing fails the delivery is requeued, so nothing is lost; if the
    /// reply has nowhere to go (`reply_to` names no queue) it is dead-lettered with the reason.
    pub async fn finish(
        &self,
        model: &ModelMetrics,
        lane: Lane,
        delivery: Delivery,
        mut reply: Result<InferResponse, ErrorResponse>,
    ) {
        let Delivery {
            message,
            redeliveries,
            settle,
            ..
        } = delivery;
        let fingerprint = self.answered.fingerprint(&message);
        let request = message.properties;
        let error_code = reply.as_ref().err().map(|e| e.code);
        let request_id = request.message_id.as_deref();
        if error_code == Some(ErrorCode::Internal) && redeliveries < self.max_redeliveries {
            model.requeued();
            if let Err(e) = settle.requeue().await {
                tracing::warn!(request_id, error = %Chain(&e), "requeue failed; the broker will redeliver");
            }
            return;
        }
        let destination = destination(model.name(), &request);
        let (version, reason) = match &reply {
            Ok(response) => (Some(response.model_version.clone()), None),
            Err(error) => (None, Some(error.error.clone())),
        };
        // Asked for binary outputs where bodies must be text: answered as JSON.
        if let Ok(response) = &mut reply
            && !self.transport.carries_binary()
        {
            response.binary.clear();
        }
        let (mut body, mut header_length) = encode_reply(&reply);
        let mut claim_check = None;
        if let (Some(threshold), Some(claims), Ok(response)) =
            (request.blob_threshold, &self.claim_checks, &reply)
            && body.len() as u64 > threshold
        {
            match claims.check_in(response, body, header_length).await {
                Ok((claim, url)) => (body, header_length, claim_check) = (claim, None, Some(url)),
                Err(e) => {
                    tracing::warn!(request_id, error = %Chain(&e), "storing a large answer failed; requeueing the request");
                    if let Err(e) = settle.requeue().await {
                        tracing::warn!(request_id, error = %Chain(&e), "requeue failed; the broker will redeliver");
                    }
                    return;
                }
            }
        }
        let outgoing = Message {
            body: body.into(),
            properties: Properties {
                correlation_id: request
                    .correlation_id
                    .clone()
                    .or_else(|| request.message_id.clone()),
                message_id: request.message_id.clone(),
                model: Some(model.name().to_owned()),
                version: version.clone(),
                lane: request.lane,
                error_code,
                claim_check,
                header_length: header_length.map(|n| n as u64),
                ..Properties::default()
            },
        };
        // Answers that depend on the request alone are remembered (not the deadline's, nor
        // NOT_FOUND, which a promotion may change).
        let remembered = match (&request.message_id, error_code) {
            (Some(id), None | Some(ErrorCode::InvalidArgument | ErrorCode::ResourceExhausted)) => {
                Some((id.clone(), outgoing.clone()))
            }
            _ => None,
        };
        let settled = match self.transport.publish(&destination, outgoing).await {
            Ok(()) => {
                model.answered(version.as_deref().unwrap_or_default(), lane, error_code);
                if let Some((id, reply)) = remembered {
                    let answer = Answer { fingerprint, reply };
                    self.answered.insert(id, answer);
                }
                match reason {
                    Some(reason) if error_code == Some(ErrorCode::Internal) => {
                        model.dead_lettered(ErrorCode::Internal);
                        settle.dead_letter(ErrorCode::Internal, &reason).await
                    }
                    _ => settle.ack().await,
                }
            }
            Err(TransportError::Unroutable(queue)) => {
                let reason =
                    format!("reply_to names no queue ({queue}); the answer was not delivered");
                tracing::warn!(request_id, %queue, "reply destination does not exist; dead-lettering the request");
                model.dead_lettered(ErrorCode::NotFound);
                settle.dead_letter(ErrorCode::NotFound, &reason).await
            }
            Err(e) => {
                tracing::warn!(request_id, error = %Chain(&e), %destination, "publishing the reply failed; requeueing the request");
                settle.requeue().await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(request_id, error = %Chain(&e), "settling the delivery failed; the broker will redeliver");
        }
    }
}

/// Where the answer to a request with `properties` goes: `reply_to`, else the result queue.
fn destination(model: &str, properties: &Properties) -> String {
    properties
        .reply_to
        .clone()
        .unwrap_or_else(|| queues::results(model))
}

/// An answer published, as remembered.
#[derive(Debug, Clone)]
pub struct Answer {
    fingerprint: u64,
    reply: Message,
}

/// Recent answers by message id, the oldest forgotten first, within a count and a byte budget.
struct RecentAnswers {
    max_entries: usize,
    max_bytes: usize,
    keys: RandomState,
    inner: Mutex<Remembered>,
}

struct Remembered {
    by_id: HashMap<String, Answer>,
    order: VecDeque<String>,
    bytes: usize,
}

impl RecentAnswers {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            keys: RandomState::new(),
            // Sized for twice the entries: with the churn of a full window, a table filled past
            // half its capacity grows once to clear its tombstones (a step of tens of MiB some
            // 600 000 answers in, seen in a soak); one this big only ever rehashes in place.
            inner: Mutex::new(Remembered {
                by_id: HashMap::with_capacity(2 * max_entries),
                order: VecDeque::with_capacity(max_entries),
                bytes: 0,
            }),
        }
    }

    /// What makes two deliveries the same request besides their message id (keyed per
    /// process, so nobody can forge a matching request).
    fn fingerprint(&self, message: &Message) -> u64 {
        let properties = &message.properties;
        self.keys
            .hash_one((&message.body[..], &properties.model, &properties.version))
    }

    fn lock(&self) -> MutexGuard<'_, Remembered> {
        // Each operation leaves the map and the order consistent before it can panic.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, id: &str, fingerprint: u64) -> Option<Answer> {
        self.lock()
            .by_id
            .get(id)
            .filter(|answer| answer.fingerprint == fingerprint)
            .cloned()
    }

    fn insert(&self, id: String, answer: Answer) {
        let size = answer.reply.body.len();
        if size > self.max_bytes {
            return;
        }
        let mut guard = self.lock();
        let remembered = &mut *guard;
        if remembered.by_id.contains_key(&id) {
            return;
        }
        while remembered.order.len() >= self.max_entries || remembered.bytes + size > self.max_bytes
        {
            let Some(oldest) = remembered.order.pop_front() else {
                break;
            };
            if let Some(old) = remembered.by_id.remove(&oldest) {
                remembered.bytes -= old.reply.body.len();
            }
        }
        remembered.bytes += size;
        remembered.by_id.insert(id.clone(), answer);
        remembered.order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Answer {
        Answer {
            fingerprint: 7,
            reply: Message {
                body: body.to_owned().into(),
                properties: Properties::default(),
            },
        }
    }

    #[test]
    fn recent_answers_forget_the_oldest_by_count_and_bytes() {
        let answers = RecentAnswers::new(2, 10);
        for id in ["a", "b", "b", "c"] {
            answers.insert(id.into(), answer("xxx"));
        }
        assert!(answers.get("a", 7).is_none());
        assert!(answers.get("b", 7).is_some() && answers.get("c", 7).is_some());
        assert!(
            answers.get("c", 8).is_none(),
            "another body is another request"
        );
        answers.insert("d".into(), answer("12345678"));
        assert!(answers.get("b", 7).is_none() && answers.get("c", 7).is_none());
        assert_eq!(answers.lock().bytes, 8);
        answers.insert("huge".into(), answer("more than ten bytes"));
        assert!(answers.get("huge", 7).is_none() && answers.get("d", 7).is_some());
    }

    #[test]
    fn a_full_window_under_churn_never_grows_its_table() {
        let answers = RecentAnswers::new(4096, usize::MAX);
        let sized = answers.lock().by_id.capacity();
        for id in 0..200_000 {
            answers.insert(id.to_string(), answer("x"));
            // Tombstones lower the spare room reported; a grown table doubles it.
            assert!(answers.lock().by_id.capacity() <= sized, "grew after {id}");
        }
        assert_eq!(answers.lock().by_id.len(), 4096);
    }
}
