//! Publishing results: the response (or error) goes to `reply_to`, else to the model's result
//! queue, and only once the transport has confirmed it is the request's delivery acked.

use crate::protocol::{
    ErrorCode, ErrorResponse, InferError, InferResponse, Tensor, TensorData, encode_reply,
};
use crate::store::Manifest;
use crate::transport::{Delivery, Message, Properties, Transport, TransportError, queues};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Redeliveries after which a request that keeps failing internally is dead-lettered.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 3;

/// The outcome of one request.
pub type Outcome = Result<Vec<TensorData>, InferError>;

/// Builds the response for `outputs` (manifest order, `rows` rows each).
pub fn response(
    manifest: &Manifest,
    id: String,
    outputs: Vec<TensorData>,
    rows: usize,
) -> InferResponse {
    let outputs = manifest
        .outputs
        .iter()
        .zip(outputs)
        .map(|(spec, data)| Tensor {
            name: spec.name.clone(),
            shape: spec
                .shape
                .iter()
                .map(|&d| if d < 0 { rows } else { d as usize })
                .collect(),
            datatype: spec.datatype,
            data,
        })
        .collect();
    InferResponse {
        id,
        model_name: manifest.name.to_string(),
        model_version: manifest.version.to_string(),
        outputs,
    }
}

/// Publishes answers and settles their deliveries; remembers the message ids it answered
/// recently, so a redelivery of an answered request is acked without computing it again.
#[derive(Clone)]
pub struct Publisher {
    transport: Arc<dyn Transport>,
    max_redeliveries: u32,
    answered: Arc<RecentIds>,
}

/// Message ids remembered as answered, per worker.
pub const ANSWERED_WINDOW: usize = 65_536;

impl Publisher {
    /// Answers over `transport`; internal failures are retried `max_redeliveries` times.
    pub fn new(transport: Arc<dyn Transport>, max_redeliveries: u32) -> Self {
        Self {
            transport,
            max_redeliveries,
            answered: Arc::new(RecentIds::new(ANSWERED_WINDOW)),
        }
    }

    /// Redeliveries after which a request is dead-lettered instead of computed again.
    pub fn max_redeliveries(&self) -> u32 {
        self.max_redeliveries
    }

    /// Whether `delivery` is a redelivery of a request whose answer this worker published
    /// (the ack was lost, e.g. with its connection).
    pub fn was_answered(&self, delivery: &Delivery) -> bool {
        delivery.redeliveries > 0
            && delivery
                .message
                .properties
                .message_id
                .as_deref()
                .is_some_and(|id| self.answered.contains(id))
    }

    /// Acks a redelivery already answered.
    pub async fn skip(&self, delivery: Delivery) {
        metrics::counter!("ember_requests_deduplicated_total").increment(1);
        if let Err(e) = delivery.settle.ack().await {
            tracing::warn!(error = %e, "acking a duplicate failed; the broker will redeliver");
        }
    }

    /// Answers `delivery` for `model` and settles it: publish the reply, then ack. An internal
    /// failure is requeued (no reply) until `max_redeliveries`, then answered and
    /// dead-lettered. If publishing fails the delivery is requeued, so nothing is lost; if the
    /// reply has nowhere to go (`reply_to` names no queue) it is dead-lettered with the reason.
    pub async fn finish(
        &self,
        model: &str,
        delivery: Delivery,
        reply: Result<InferResponse, ErrorResponse>,
    ) {
        let Delivery {
            message,
            redeliveries,
            settle,
            ..
        } = delivery;
        let request = message.properties;
        let error_code = reply.as_ref().err().map(|e| e.code);
        if error_code == Some(ErrorCode::Internal) && redeliveries < self.max_redeliveries {
            metrics::counter!("ember_requests_requeued_total").increment(1);
            if let Err(e) = settle.requeue().await {
                tracing::warn!(error = %e, "requeue failed; the broker will redeliver");
            }
            return;
        }
        let destination = request
            .reply_to
            .clone()
            .unwrap_or_else(|| queues::results(model));
        let (version, reason) = match &reply {
            Ok(response) => (Some(response.model_version.clone()), None),
            Err(error) => (None, Some(error.error.clone())),
        };
        let message_id = request.message_id;
        let outgoing = Message {
            body: encode_reply(&reply).into(),
            properties: Properties {
                correlation_id: request.correlation_id.or_else(|| message_id.clone()),
                message_id: message_id.clone(),
                model: Some(model.to_owned()),
                version,
                lane: request.lane,
                error_code,
                ..Properties::default()
            },
        };
        let counter = match error_code {
            None => "ok",
            Some(code) => code.as_str(),
        };
        metrics::counter!("ember_requests_total", "code" => counter).increment(1);
        let settled = match self.transport.publish(&destination, outgoing).await {
            Ok(()) => {
                if let Some(id) = message_id {
                    self.answered.insert(id);
                }
                match reason {
                    Some(reason) if error_code == Some(ErrorCode::Internal) => {
                        settle.dead_letter(ErrorCode::Internal, &reason).await
                    }
                    _ => settle.ack().await,
                }
            }
            Err(TransportError::Unroutable(queue)) => {
                let reason =
                    format!("reply_to names no queue ({queue}); the answer was not delivered");
                tracing::warn!(%queue, "reply destination does not exist; dead-lettering the request");
                settle.dead_letter(ErrorCode::NotFound, &reason).await
            }
            Err(e) => {
                tracing::warn!(error = %e, %destination, "publishing the reply failed; requeueing the request");
                settle.requeue().await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling the delivery failed; the broker will redeliver");
        }
    }
}

/// A bounded set of recent ids: the oldest is forgotten when full.
struct RecentIds {
    capacity: usize,
    ids: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ids: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (HashSet<String>, VecDeque<String>)> {
        // Each operation leaves the pair consistent before it can panic.
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn contains(&self, id: &str) -> bool {
        self.lock().0.contains(id)
    }

    fn insert(&self, id: String) {
        let mut guard = self.lock();
        let (set, order) = &mut *guard;
        if set.contains(&id) {
            return;
        }
        if order.len() == self.capacity
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        set.insert(id.clone());
        order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::RecentIds;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let ids = RecentIds::new(2);
        for id in ["a", "b", "b", "c"] {
            ids.insert(id.into());
        }
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
    }
}
