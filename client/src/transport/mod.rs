//! Transports: where requests come from and results go. A transport is a small broker client:
//! it publishes a message to a queue (returning once the broker has it, i.e. confirmed) and
//! subscribes to queues in priority order, handing out deliveries that must be settled.
//!
//! Every transport behaves like [`memory::MemoryTransport`], the reference; the shared suite in
//! `tests/transport_suite/` runs against each one.

pub mod amqp;
pub mod memory;
pub mod servicebus;

use crate::chain::Cause;
use crate::protocol::{ErrorCode, Lane};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Queue names of the topology in `docs/protocol.md`.
pub mod queues {
    use crate::protocol::Lane;

    /// `ember.<model>.realtime` / `ember.<model>.batch`: where requests for `model` wait.
    pub fn requests(model: &str, lane: Lane) -> String {
        format!("ember.{model}.{}", lane.as_str())
    }

    /// `ember.<model>.results`: batch results without `reply_to`.
    pub fn results(model: &str) -> String {
        format!("ember.{model}.results")
    }

    /// `ember.<model>.job.<job>`: the answers of one batch job, kept until its submitter
    /// stores them.
    pub fn job_results(model: &str, job: &str) -> String {
        format!("ember.{model}.job.{job}")
    }

    /// `ember.<model>.dead`: dead letters of `ember.<model>.*`.
    pub fn dead(model: &str) -> String {
        format!("ember.{model}.dead")
    }

    /// The durable queues of `model`: both lanes, results, dead letters.
    pub fn all(model: &str) -> [String; 4] {
        [
            requests(model, Lane::Realtime),
            requests(model, Lane::Batch),
            results(model),
            dead(model),
        ]
    }

    /// The dead-letter queue for messages taken from `queue` (`ember.<model>.<lane>`).
    pub fn dead_for(queue: &str) -> String {
        match queue
            .strip_prefix("ember.")
            .and_then(|rest| rest.rsplit_once('.'))
        {
            Some((model, _)) => dead(model),
            None => format!("{queue}.dead"),
        }
    }
}

/// The metrics the transports record (the worker describes and exports them).
pub mod metrics {
    /// Messages the broker returned as unroutable whose publisher lapin told "delivered" (it
    /// attributes a return to any publish of a multiple-ack): each is an answer not delivered.
    pub const UNROUTABLE_UNMATCHED: &str = "ember_transport_unroutable_unmatched_total";
    /// Broker connections opened again after one was lost.
    pub const RECONNECTS: &str = "ember_transport_reconnects_total";
}

/// Names of the wire protocol's `ember-*` headers (AMQP headers, Service Bus custom properties).
pub mod headers {
    /// `ember-model`.
    pub const MODEL: &str = "ember-model";
    /// `ember-model-version`.
    pub const VERSION: &str = "ember-model-version";
    /// `ember-lane`.
    pub const LANE: &str = "ember-lane";
    /// `ember-deadline-ms`.
    pub const DEADLINE: &str = "ember-deadline-ms";
    /// `ember-sent-ms`.
    pub const SENT: &str = "ember-sent-ms";
    /// `ember-error-code`.
    pub const ERROR_CODE: &str = "ember-error-code";
    /// `ember-error`.
    pub const ERROR: &str = "ember-error";
    /// `ember-blob-threshold`.
    pub const BLOB_THRESHOLD: &str = "ember-blob-threshold";
    /// `ember-claim-check`.
    pub const CLAIM_CHECK: &str = "ember-claim-check";
    /// `inference-header-content-length`: the binary tensor data extension's framing.
    pub const HEADER_LENGTH: &str = "inference-header-content-length";
}

/// Message properties of the wire protocol (AMQP properties and `ember-*` headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Request id; de-duplicates redeliveries.
    pub message_id: Option<String>,
    /// Echoed on the reply.
    pub correlation_id: Option<String>,
    /// Queue the reply goes to (realtime RPC).
    pub reply_to: Option<String>,
    /// `ember-model`.
    pub model: Option<String>,
    /// `ember-model-version`: a version or an alias (default `production`).
    pub version: Option<String>,
    /// `ember-lane`.
    pub lane: Option<Lane>,
    /// `ember-deadline-ms`: unix epoch milliseconds.
    pub deadline_ms: Option<u64>,
    /// `ember-sent-ms` on requests: when the producer sent it, unix epoch milliseconds (for
    /// the queue-wait metric; optional).
    pub sent_ms: Option<u64>,
    /// `ember-error-code` on error replies and dead letters.
    pub error_code: Option<ErrorCode>,
    /// `ember-error` on dead letters: why.
    pub error: Option<String>,
    /// `ember-blob-threshold` on requests: answers with a larger body go to blob storage,
    /// and the reply carries a claim check instead.
    pub blob_threshold: Option<u64>,
    /// `ember-claim-check` on replies: the URL of the answer in blob storage.
    pub claim_check: Option<String>,
    /// `inference-header-content-length`: the body is a JSON header of this many bytes followed
    /// by binary tensors ([`crate::protocol::binary`]); absent, the body is JSON.
    pub header_length: Option<u64>,
}

impl Properties {
    /// The deadline as a time.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.deadline_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// How long ago the producer sent it, if it said (0 if the clocks disagree).
    pub fn queued_for(&self) -> Option<Duration> {
        let sent = UNIX_EPOCH + Duration::from_millis(self.sent_ms?);
        Some(SystemTime::now().duration_since(sent).unwrap_or_default())
    }

    /// Stamps it as sent now (`ember-sent-ms`).
    pub fn sent_now(mut self) -> Self {
        self.sent_ms = unix_ms(SystemTime::now());
        self
    }

    /// Sets the deadline `after` from now.
    pub fn with_deadline_in(mut self, after: Duration) -> Self {
        self.deadline_ms = unix_ms(SystemTime::now() + after);
        self
    }
}

fn unix_ms(at: SystemTime) -> Option<u64> {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// A message: body plus properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body (OIP JSON).
    pub body: Bytes,
    /// Its properties.
    pub properties: Properties,
}

/// A transport failure; the broker client's own error, where there is one, is its `source`
/// (written out by [`Chain`](crate::chain::Chain)).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached or refused the operation; it may be retried.
    #[error("transport unavailable: {context}")]
    Unavailable {
        /// What failed.
        context: String,
        /// Why, as the layer below said.
        #[source]
        cause: Option<Cause>,
    },
    /// Nothing consumes the destination (no such queue): retrying will not help.
    #[error("no queue to deliver to: {0}")]
    Unroutable(String),
    /// The broker refused a declaration (e.g. a queue exists with other arguments).
    #[error("topology: {context}")]
    Topology {
        /// What was refused.
        context: String,
        /// Why, as the layer below said.
        #[source]
        cause: Option<Cause>,
    },
}

impl TransportError {
    /// [`TransportError::Unavailable`] without a lower-layer cause.
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::Unavailable {
            context: context.into(),
            cause: None,
        }
    }

    /// [`TransportError::Unavailable`] because of `cause`.
    pub fn unavailable_by(
        context: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            context: context.into(),
            cause: Some(Box::new(cause)),
        }
    }

    /// [`TransportError::Topology`] without a lower-layer cause.
    pub fn topology(context: impl Into<String>) -> Self {
        Self::Topology {
            context: context.into(),
            cause: None,
        }
    }

    /// [`TransportError::Topology`] because of `cause`.
    pub fn topology_by(
        context: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Topology {
            context: context.into(),
            cause: Some(Box::new(cause)),
        }
    }
}

/// How a delivery is settled with its broker. Exactly one method is called, once; a delivery
/// dropped unsettled is requeued (as when a consumer's channel closes).
#[async_trait]
pub trait Settle: Send {
    /// Done with: remove from the queue.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// Not done: put back for redelivery.
    async fn requeue(self: Box<Self>) -> Result<(), TransportError>;
    /// Never processable: move to the dead-letter queue with `code` and `reason` in headers.
    async fn dead_letter(
        self: Box<Self>,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), TransportError>;
}

/// A message taken from a queue, to be settled once handled.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The queue it came from.
    pub queue: String,
    /// How many times it was delivered before (0 on first delivery).
    pub redeliveries: u32,
    /// Its settle handle.
    pub settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("properties", &self.message.properties)
            .field("redeliveries", &self.redeliveries)
            .finish_non_exhaustive()
    }
}

/// A consumer of one or more queues.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery, taking from earlier queues first; `None` once the transport closed
    /// or, after [`stop`](Self::stop), once the deliveries already taken are handed out.
    async fn next(&mut self) -> Option<Delivery>;
    /// Stops taking new deliveries (graceful drain). Deliveries already taken keep coming from
    /// `next` and stay settleable while the subscription lives.
    async fn stop(&mut self);
    /// Ends the subscription once every delivery it handed out is settled, returning when the
    /// broker has taken every settlement (so closing the connection next cannot lose one).
    async fn close(self: Box<Self>) {}
}

/// Sends requests whose answers come back to one private [`Inbox`].
#[async_trait]
pub trait InboxSender: Send + Sync {
    /// Publishes `message` to `queue` with `reply_to` set to the inbox; returns once the broker
    /// has it. A queue that does not exist is [`TransportError::Unroutable`].
    async fn send(&self, queue: &str, message: Message) -> Result<(), TransportError>;
}

/// A private inbox for RPC answers (RabbitMQ's direct reply-to): who sends through it, and the
/// answers, which end when the inbox is lost (e.g. with its connection). Dropping both closes it.
pub struct Inbox {
    /// Sends requests answered to this inbox.
    pub sender: Arc<dyn InboxSender>,
    /// The answers, in arrival order.
    pub replies: BoxStream<'static, Message>,
}

/// What a worker needs of a broker: its model's queues, publishing with confirms, consuming.
/// A new broker serves once it has this; [`ClientTransport`] adds what clients need.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Creates `model`'s queues (requests, results, dead letters) if they do not exist yet;
    /// idempotent.
    async fn declare(&self, model: &str) -> Result<(), TransportError>;
    /// Publishes `message` to `queue`; returns once the broker has taken responsibility for it.
    async fn publish(&self, queue: &str, message: Message) -> Result<(), TransportError>;
    /// Consumes `queues`, earlier ones first, with at most `prefetch` deliveries unsettled.
    async fn subscribe(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<Box<dyn Subscription>, TransportError>;
    /// Closes the connection once everything sent on it (acks included) has reached the
    /// broker: the last step of a graceful shutdown.
    async fn close(&self) {}
    /// Whether the broker is reachable now (readiness); a transport without a connection
    /// always is.
    fn connected(&self) -> bool {
        true
    }
    /// Whether message bodies may be any bytes (binary tensor data); where not, answers asking
    /// for binary outputs are sent as JSON.
    fn carries_binary(&self) -> bool {
        true
    }
}

/// What a client needs besides: private inboxes for RPC answers, and queues of its own (a
/// batch job's answers).
#[async_trait]
pub trait ClientTransport: Transport {
    /// Opens a private inbox for RPC answers.
    async fn inbox(&self) -> Result<Inbox, TransportError>;
    /// Creates the durable queue `queue` (e.g. a batch job's results) if it does not exist;
    /// the broker deletes it once unused for `expiry`.
    async fn declare_queue(
        &self,
        queue: &str,
        expiry: Option<Duration>,
    ) -> Result<(), TransportError>;
    /// Deletes `queue` with whatever it holds; a queue that does not exist is not an error.
    async fn delete_queue(&self, queue: &str) -> Result<(), TransportError>;
    /// How many consumers take from `queue` (a queue that does not exist is
    /// [`TransportError::Unroutable`]); `None` where the broker does not say (the memory
    /// transport, Service Bus).
    async fn consumers(&self, _queue: &str) -> Result<Option<u32>, TransportError> {
        Ok(None)
    }
}
