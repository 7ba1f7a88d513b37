//! The RabbitMQ transport (AMQP 0-9-1 through `lapin`): the queue topology of `docs/protocol.md`,
//! publisher confirms, manual acks with a prefetch window, reconnection with backoff, and
//! direct reply-to RPC for clients.
//!
//! Settling: `ack` acks; `requeue` republishes the message to the tail of its queue with
//! `ember-redeliveries` raised by one, then acks (so classic queues count redeliveries too and a
//! failing request does not block the head); `dead_letter` publishes it to `ember.dlx` with
//! `ember-error`/`ember-error-code` added to its headers (`x-death` and the rest kept), then acks.
//! Whatever cannot be settled is left unacked, and the broker redelivers it.

use super::headers::{
    BLOB_THRESHOLD as BLOB_THRESHOLD_HEADER, CLAIM_CHECK as CLAIM_CHECK_HEADER,
    DEADLINE as DEADLINE_HEADER, ERROR as ERROR_HEADER, ERROR_CODE as ERROR_CODE_HEADER,
    HEADER_LENGTH as HEADER_LENGTH_HEADER, LANE as LANE_HEADER, MODEL as MODEL_HEADER,
    SENT as SENT_HEADER, VERSION as VERSION_HEADER,
};
use super::{
    ClientTransport, Delivery, Inbox, InboxSender, Message, Properties, Settle, Subscription,
    Transport, TransportError, queues,
};
use crate::chain::Chain;
use crate::protocol::{ErrorCode, Lane};
use crate::secret::Secret;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connect, Connection, ConnectionProperties,
    Consumer, ExchangeKind,
};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

/// The dead-letter exchange; it routes by the source queue's name into `ember.<model>.dead`.
pub const DEAD_LETTER_EXCHANGE: &str = "ember.dlx";
/// RabbitMQ's direct reply-to pseudo-queue (RPC replies without a reply queue).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Header counting the redeliveries Ember made itself (by republishing).
pub const REDELIVERIES_HEADER: &str = "ember-redeliveries";

/// Quorum queues count every delivery attempt in this header.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Seconds between heartbeats unless the URL sets `heartbeat`: a broker that stops answering
/// (a black-holed network, a frozen node) is given up within two of them, then reconnected.
const HEARTBEAT_SECONDS: u16 = 10;
/// Longest to wait for the broker to confirm a publish before publishing again.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a connection attempt may take unless the URL sets `connection_timeout` (ms).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PUBLISH_ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The kind of the durable queues Ember declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum QueueType {
    /// Replicated, and every redelivery is counted (`x-delivery-count`).
    #[default]
    Quorum,
    /// Single-node queues.
    Classic,
}

/// How to reach the broker and shape the queues.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://...`.
    pub url: Secret,
    /// PEM file of the CA that signed the broker's certificate (for `amqps://`), beside the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// Kind of queues `declare` creates.
    pub queue_type: QueueType,
    /// Queues unused this long are deleted by the broker (`x-expires`); `None` keeps them.
    pub queue_expiry: Option<Duration>,
}

impl AmqpConfig {
    /// Defaults (quorum queues that never expire) for `url`.
    pub fn new(url: impl Into<Secret>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            queue_type: QueueType::default(),
            queue_expiry: None,
        }
    }
}

/// A RabbitMQ client; clones share one connection, reopened when it breaks.
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

struct Shared {
    config: AmqpConfig,
    /// `config.url`, parsed, with Ember's heartbeat and connect timeout where it sets none.
    uri: AMQPUri,
    ca_chain: Option<String>,
    current: ArcSwapOption<Session>,
    connecting: tokio::sync::Mutex<()>,
    tags: AtomicU64,
}

/// One connection and its confirm-mode publishing channel.
struct Session {
    connection: Connection,
    publisher: Channel,
}

impl Session {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl AmqpTransport {
    /// Connects to the broker of `config` (once, so a wrong URL fails here).
    pub async fn connect(config: AmqpConfig) -> Result<Self, TransportError> {
        let ca_chain = match &config.ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                TransportError::unavailable_by(format!("cannot read CA file {}", path.display()), e)
            })?),
            None => None,
        };
        // The parser's own messages may quote the URL, password included: never pass them on.
        let mut uri: AMQPUri = config.url.expose().parse().map_err(|_| {
            TransportError::unavailable(format!(
                "{} is not an AMQP URL: expected amqp[s]://user:password@host[:port][/vhost]",
                config.url
            ))
        })?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECONDS);
        uri.query
            .connection_timeout
            .get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
        let shared = Arc::new(Shared {
            config,
            uri,
            ca_chain,
            current: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            tags: AtomicU64::new(0),
        });
        shared.session().await?;
        Ok(Self { shared })
    }

    /// Deletes `model`'s queues (requests, results, dead letters) with whatever they hold.
    pub async fn delete(&self, model: &str) -> Result<(), TransportError> {
        let names = [
            queues::requests(model, Lane::Realtime),
            queues::requests(model, Lane::Batch),
            queues::results(model),
            queues::dead(model),
        ];
        for name in names {
            self.delete_queue(&name).await?;
        }
        Ok(())
    }

    /// Messages ready in `queue` (not counting unacked deliveries).
    pub async fn depth(&self, queue: &str) -> Result<u32, TransportError> {
        Ok(self.shared.inspect(queue).await?.message_count())
    }
}

impl Shared {
    /// `queue` as the broker has it (a passive declaration: nothing is created).
    async fn inspect(&self, queue: &str) -> Result<lapin::Queue, TransportError> {
        let channel = self.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await;
        let _ = channel.close(200, "done".into()).await;
        declared.map_err(|e| match e.kind() {
            lapin::ErrorKind::ProtocolError(refused)
                if *refused.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) =>
            {
                TransportError::Unroutable(queue.to_owned())
            }
            _ => TransportError::unavailable_by(format!("inspecting {queue}"), e),
        })
    }

    /// The open session, reconnecting (once) if it broke.
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        if let Some(session) = self.current.load_full().filter(|s| s.usable()) {
            return Ok(session);
        }
        let _connecting = self.connecting.lock().await;
        let previous = self.current.load_full();
        if let Some(session) = previous.clone().filter(|s| s.usable()) {
            return Ok(session);
        }
        let session = Arc::new(self.open().await.map_err(|e| {
            TransportError::unavailable_by(format!("cannot connect to {}", self.config.url), e)
        })?);
        tracing::info!(broker = %self.config.url, "connected to RabbitMQ");
        if previous.is_some() {
            metrics::counter!(super::metrics::RECONNECTS).increment(1);
        }
        self.current.store(Some(session.clone()));
        Ok(session)
    }

    async fn open(&self) -> lapin::Result<Session> {
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_chain.clone(),
        };
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("ember-{}", std::process::id()).into());
        let runtime = lapin::runtime::default_runtime()?;
        let connection = self
            .uri
            .clone()
            .connect_with_config(properties, tls, runtime)
            .await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Session {
            connection,
            publisher,
        })
    }

    /// A fresh channel for one-off operations (a failed declaration closes its channel).
    async fn channel(&self) -> Result<Channel, TransportError> {
        let session = self.session().await?;
        session
            .connection
            .create_channel()
            .await
            .map_err(|e| TransportError::unavailable_by("opening a channel", e))
    }

    fn tag(&self) -> String {
        format!(
            "ember-{}-{}",
            std::process::id(),
            self.tags.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Publishes and waits for the broker's confirm, reconnecting and retrying on failures
    /// of the connection (not on refusals).
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), TransportError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let published = match self.session().await {
                Ok(session) => {
                    publish_on(
                        &session.publisher,
                        exchange,
                        routing_key,
                        body,
                        properties.clone(),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match published {
                Err(e @ TransportError::Unavailable { .. }) if attempt < PUBLISH_ATTEMPTS => {
                    tracing::debug!(error = %Chain(&e), attempt, "publish failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn queue_arguments(&self) -> FieldTable {
        self.queue_arguments_expiring(self.config.queue_expiry)
    }

    fn queue_arguments_expiring(&self, expiry: Option<Duration>) -> FieldTable {
        let mut arguments = FieldTable::default();
        let kind = match self.config.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        arguments.insert("x-queue-type".into(), text(kind));
        if let Some(expiry) = expiry {
            let ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        arguments
    }

    async fn declare_topology(&self, channel: &Channel, model: &str) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                DEAD_LETTER_EXCHANGE.into(),
                ExchangeKind::Direct,
                exchange,
                FieldTable::default(),
            )
            .await?;
        let arguments = self.queue_arguments();
        let dead = queues::dead(model);
        channel
            .queue_declare(dead.as_str().into(), durable, arguments.clone())
            .await?;
        for lane in [Lane::Realtime, Lane::Batch] {
            let queue = queues::requests(model, lane);
            let mut with_dlx = arguments.clone();
            with_dlx.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
            channel
                .queue_declare(queue.as_str().into(), durable, with_dlx)
                .await?;
            channel
                .queue_bind(
                    dead.as_str().into(),
                    DEAD_LETTER_EXCHANGE.into(),
                    queue.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_declare(queues::results(model).into(), durable, arguments)
            .await?;
        Ok(())
    }

    /// Opens a channel consuming `queues` with `prefetch` unacked deliveries per queue.
    async fn consume(&self, queues: &[String], prefetch: u16) -> Result<Consumers, TransportError> {
        let channel = self.channel().await?;
        let consuming = async {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let mut consumers = Vec::with_capacity(queues.len());
            for queue in queues {
                let consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        self.tag().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                consumers.push(consumer);
            }
            Ok::<_, lapin::Error>(consumers)
        };
        match consuming.await {
            Ok(consumers) => Ok(Consumers {
                channel,
                consumers,
                queue_of: (0..queues.len()).collect(),
            }),
            Err(e) => {
                let _ = channel.close(200, "cannot consume".into()).await;
                Err(TransportError::unavailable_by(
                    format!("cannot consume {}", queues.join(", ")),
                    e,
                ))
            }
        }
    }
}

/// Publishes on `channel` (in confirm mode, `mandatory`) and waits for the confirm.
///
/// Replies to direct reply-to are not `mandatory`: RabbitMQ (3.x) returns them as unroutable
/// even when it delivers them, and a caller gone from direct reply-to cannot be answered anyway.
async fn publish_on(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), TransportError> {
    let options = BasicPublishOptions {
        mandatory: !routing_key.starts_with(DIRECT_REPLY_TO),
        ..BasicPublishOptions::default()
    };
    let message_id = properties.message_id().clone();
    let published = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await
        .map_err(|e| TransportError::unavailable_by(format!("publishing to {routing_key}"), e))?;
    // A confirm that never comes (a connection dying mid-publish) fails the publish, which the
    // caller retries: sent twice at worst, never stuck.
    let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, published)
        .await
        .map_err(|_| {
            TransportError::unavailable(format!(
                "no confirm for a message to {routing_key} within {CONFIRM_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| TransportError::unavailable_by(format!("publishing to {routing_key}"), e))?;
    // lapin hands a returned message to one of the publishes a multiple-ack confirms, not
    // necessarily the one returned: only a return of this very message makes it unroutable.
    let ours = |returned: &lapin::message::BasicReturnMessage| {
        returned.delivery.routing_key.as_str() == routing_key
            && *returned.delivery.properties.message_id() == message_id
    };
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))
            if returned.reply_code == 312 && ours(&returned) =>
        {
            Err(TransportError::Unroutable(routing_key.to_owned()))
        }
        Confirmation::Ack(Some(returned)) if returned.reply_code == 312 => {
            let lost = returned.delivery.properties.message_id().as_ref();
            tracing::error!(
                request_id = lost.map(|id| id.as_str()),
                queue = %returned.delivery.routing_key,
                "a message to a queue that does not exist was returned, and its publisher was told it was delivered"
            );
            metrics::counter!(super::metrics::UNROUTABLE_UNMATCHED).increment(1);
            Ok(())
        }
        Confirmation::Nack(_) | Confirmation::Ack(Some(_)) => Err(TransportError::unavailable(
            format!("the broker refused the message for {routing_key}"),
        )),
        Confirmation::NotRequested => Err(TransportError::unavailable(
            "publisher confirms are off on this channel",
        )),
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn declare(&self, model: &str) -> Result<(), TransportError> {
        let channel = self.shared.channel().await?;
        let declared = self.shared.declare_topology(&channel, model).await;
        let _ = channel.close(200, "declared".into()).await;
        declared.map_err(|e| {
            TransportError::topology_by(
                format!(
                    "declaring the queues of {model} (if they exist with other arguments, \
                     --queue-type must match how they were created)"
                ),
                e,
            )
        })
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), TransportError> {
        let properties = to_amqp(&message.properties);
        self.shared
            .publish("", queue, &message.body, properties)
            .await
    }

    async fn subscribe(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        let active = self.shared.consume(queues, prefetch).await?;
        Ok(Box::new(AmqpSubscription {
            shared: self.shared.clone(),
            queues: queues.to_vec(),
            prefetch,
            active: Some(active),
            stopping: false,
        }))
    }

    /// A connection close is answered only after every frame sent before it (acks included)
    /// was read: exiting without it can drop acks still in the socket's buffers.
    async fn close(&self) {
        if let Some(session) = self.shared.current.swap(None)
            && let Err(e) = session.connection.close(200, "shutting down".into()).await
        {
            tracing::debug!(error = %Chain(&e), "closing the connection");
        }
    }

    fn connected(&self) -> bool {
        self.shared
            .current
            .load()
            .as_ref()
            .is_some_and(|s| s.usable())
    }
}

#[async_trait]
impl ClientTransport for AmqpTransport {
    /// Direct reply-to: a channel consuming `amq.rabbitmq.reply-to` (no queue is declared)
    /// and publishing, in confirm mode, the requests it answers.
    async fn inbox(&self) -> Result<Inbox, TransportError> {
        let channel = self.shared.channel().await?;
        let opened = async {
            let options = BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            };
            let replies = channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    self.shared.tag().into(),
                    options,
                    FieldTable::default(),
                )
                .await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(replies)
        };
        let replies = match opened.await {
            Ok(replies) => replies,
            Err(e) => {
                let _ = channel.close(200, "no inbox".into()).await;
                return Err(TransportError::unavailable_by("opening a reply inbox", e));
            }
        };
        let replies = replies
            .take_while(|reply| std::future::ready(reply.is_ok()))
            .filter_map(|reply| std::future::ready(reply.ok()))
            .map(|reply| Message {
                properties: from_amqp(&reply.properties),
                body: Bytes::from(reply.data),
            });
        Ok(Inbox {
            sender: Arc::new(AmqpInboxSender { channel }),
            replies: replies.boxed(),
        })
    }

    async fn declare_queue(
        &self,
        queue: &str,
        expiry: Option<Duration>,
    ) -> Result<(), TransportError> {
        let channel = self.shared.channel().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let arguments = self.shared.queue_arguments_expiring(expiry);
        let declared = channel
            .queue_declare(queue.into(), options, arguments)
            .await;
        let _ = channel.close(200, "declared".into()).await;
        declared
            .map(drop)
            .map_err(|e| TransportError::topology_by(format!("declaring {queue}"), e))
    }

    async fn consumers(&self, queue: &str) -> Result<Option<u32>, TransportError> {
        Ok(Some(self.shared.inspect(queue).await?.consumer_count()))
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), TransportError> {
        let channel = self.shared.channel().await?;
        let deleted = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let _ = channel.close(200, "deleted".into()).await;
        deleted
            .map(drop)
            .map_err(|e| TransportError::unavailable_by(format!("deleting {queue}"), e))
    }
}

/// The publishing side of a direct reply-to inbox; closes its channel when dropped.
struct AmqpInboxSender {
    channel: Channel,
}

#[async_trait]
impl InboxSender for AmqpInboxSender {
    async fn send(&self, queue: &str, mut message: Message) -> Result<(), TransportError> {
        message.properties.reply_to = Some(DIRECT_REPLY_TO.into());
        let properties = to_amqp(&message.properties);
        publish_on(&self.channel, "", queue, &message.body, properties).await
    }
}

impl Drop for AmqpInboxSender {
    fn drop(&mut self) {
        if self.channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            runtime.spawn(async move { channel.close(200, "inbox closed".into()).await });
        }
    }
}

/// A channel and its consumers, with the index of the queue each consumes.
struct Consumers {
    channel: Channel,
    consumers: Vec<Consumer>,
    queue_of: Vec<usize>,
}

impl Consumers {
    fn remove(&mut self, position: usize) {
        self.consumers.remove(position);
        self.queue_of.remove(position);
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        // Closing the channel hands its unacked deliveries back to the broker.
        if self.channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            runtime.spawn(async move { channel.close(200, "unsubscribed".into()).await });
        }
    }
}

/// The first item any of `consumers` has ready, earlier ones first.
async fn next_of(
    consumers: &mut [Consumer],
) -> (usize, Option<lapin::Result<lapin::message::Delivery>>) {
    std::future::poll_fn(|cx| {
        for (index, consumer) in consumers.iter_mut().enumerate() {
            if let Poll::Ready(item) = Pin::new(consumer).poll_next(cx) {
                return Poll::Ready((index, item));
            }
        }
        Poll::Pending
    })
    .await
}

struct AmqpSubscription {
    shared: Arc<Shared>,
    queues: Vec<String>,
    prefetch: u16,
    active: Option<Consumers>,
    stopping: bool,
}

impl AmqpSubscription {
    /// Consumes again after the channel or connection broke, backing off while it fails.
    async fn resubscribe(&mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.shared.consume(&self.queues, self.prefetch).await {
                Ok(active) => {
                    tracing::info!(queues = ?self.queues, "consuming again");
                    self.active = Some(active);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), retry_in = ?backoff, "cannot consume; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn delivery(&self, queue_index: usize, delivery: lapin::message::Delivery) -> Delivery {
        let queue = self.queues[queue_index].clone();
        let redeliveries = redeliveries(&delivery);
        let body = Bytes::from(delivery.data);
        Delivery {
            message: Message {
                body: body.clone(),
                properties: from_amqp(&delivery.properties),
            },
            queue: queue.clone(),
            redeliveries,
            settle: Box::new(AmqpSettle {
                shared: self.shared.clone(),
                acker: delivery.acker,
                queue,
                body,
                properties: delivery.properties,
                redeliveries,
                settled: false,
            }),
        }
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Some(active) = self.active.as_mut() else {
                if self.stopping {
                    return None;
                }
                self.resubscribe().await;
                continue;
            };
            if active.consumers.is_empty() {
                // Stopped and drained (the channel stays open for the settles still to come).
                return None;
            }
            let (position, item) = next_of(&mut active.consumers).await;
            let index = active.queue_of[position];
            match item {
                Some(Ok(delivery)) => return Some(self.delivery(index, delivery)),
                Some(Err(e)) if self.stopping => {
                    tracing::debug!(error = %Chain(&e), "consumer ended while stopping");
                    active.remove(position);
                }
                None if self.stopping => active.remove(position),
                Some(Err(e)) => {
                    tracing::warn!(error = %Chain(&e), queue = %self.queues[index], "lost the broker; reconnecting");
                    self.active = None;
                }
                None => {
                    tracing::warn!(queue = %self.queues[index], "the broker cancelled consuming; resubscribing");
                    self.active = None;
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
            }
        }
    }

    async fn stop(&mut self) {
        self.stopping = true;
        if let Some(active) = &self.active {
            for consumer in &active.consumers {
                // On failure the channel is gone: its consumers end by themselves.
                let _ = active
                    .channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await;
            }
        }
    }

    async fn close(mut self: Box<Self>) {
        // The broker answers a channel's close only after the acks sent on it before.
        if let Some(active) = self.active.take()
            && let Err(e) = active.channel.close(200, "unsubscribed".into()).await
        {
            tracing::debug!(error = %Chain(&e), "closing a consuming channel");
        }
    }
}

/// How often the broker delivered this message before: the quorum queue's count, Ember's own
/// count from republishing, or 1 for a classic queue's `redelivered` flag.
fn redeliveries(delivery: &lapin::message::Delivery) -> u32 {
    let headers = delivery.properties.headers().as_ref();
    let count = |name| {
        headers
            .and_then(|h| h.inner().get(name))
            .and_then(integer)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    count(DELIVERY_COUNT_HEADER)
        .max(count(REDELIVERIES_HEADER))
        .max(u32::from(delivery.redelivered))
}

struct AmqpSettle {
    shared: Arc<Shared>,
    acker: Acker,
    queue: String,
    body: Bytes,
    properties: BasicProperties,
    redeliveries: u32,
    settled: bool,
}

/// An acker's answer as a result: `Ok(false)` means its channel is gone (the broker redelivers).
fn acked(result: lapin::Result<bool>) -> Result<(), TransportError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(TransportError::unavailable(
            "the delivery's channel closed; the broker redelivers it",
        )),
        Err(e) => Err(TransportError::unavailable_by("settling a delivery", e)),
    }
}

impl AmqpSettle {
    /// The message's properties with `entries` added to its headers (the others kept).
    fn with_headers(&self, entries: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        for (name, value) in entries {
            headers.insert((*name).into(), value.clone());
        }
        self.properties.clone().with_headers(headers)
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.settled = true;
        acked(self.acker.ack(BasicAckOptions::default()).await)
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), TransportError> {
        self.settled = true;
        let count = i64::from(self.redeliveries) + 1;
        let properties = self.with_headers(&[(REDELIVERIES_HEADER, AMQPValue::LongLongInt(count))]);
        let republished = self
            .shared
            .publish("", &self.queue, &self.body, properties)
            .await;
        match republished {
            Ok(()) => acked(self.acker.ack(BasicAckOptions::default()).await),
            Err(e) => {
                tracing::debug!(error = %Chain(&e), "republishing failed; requeueing in place");
                let options = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                acked(self.acker.nack(options).await)
            }
        }
    }

    async fn dead_letter(
        mut self: Box<Self>,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.settled = true;
        let properties = self.with_headers(&[
            (ERROR_CODE_HEADER, text(code.as_str())),
            (ERROR_HEADER, text(reason)),
        ]);
        let published = self
            .shared
            .publish(DEAD_LETTER_EXCHANGE, &self.queue, &self.body, properties)
            .await;
        match published {
            Ok(()) => acked(self.acker.ack(BasicAckOptions::default()).await),
            Err(e) => {
                // Let the broker dead-letter it instead (x-death, without Ember's reason).
                tracing::warn!(error = %Chain(&e), "publishing the dead letter failed; rejecting it");
                acked(self.acker.reject(BasicRejectOptions::default()).await)
            }
        }
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        if !self.settled
            && self.acker.usable()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let acker = self.acker.clone();
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            runtime.spawn(async move { acker.nack(options).await });
        }
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        other => string(other)?.trim().parse().ok(),
    }
}

fn string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The AMQP properties and headers of `properties` (persistent, JSON content).
pub fn to_amqp(properties: &Properties) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: Option<AMQPValue>| {
        if let Some(value) = value {
            headers.insert(name.into(), value);
        }
    };
    put(MODEL_HEADER, properties.model.as_deref().map(text));
    put(VERSION_HEADER, properties.version.as_deref().map(text));
    put(LANE_HEADER, properties.lane.map(|lane| text(lane.as_str())));
    put(
        DEADLINE_HEADER,
        properties
            .deadline_ms
            .map(|ms| AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX))),
    );
    put(
        SENT_HEADER,
        properties
            .sent_ms
            .map(|ms| AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX))),
    );
    put(
        ERROR_CODE_HEADER,
        properties.error_code.map(|code| text(code.as_str())),
    );
    put(ERROR_HEADER, properties.error.as_deref().map(text));
    put(
        BLOB_THRESHOLD_HEADER,
        properties
            .blob_threshold
            .map(|bytes| AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX))),
    );
    put(
        CLAIM_CHECK_HEADER,
        properties.claim_check.as_deref().map(text),
    );
    put(
        HEADER_LENGTH_HEADER,
        properties
            .header_length
            .map(|bytes| AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX))),
    );
    let short = |value: &Option<String>| value.as_deref().map(ShortString::from);
    let mut amqp = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = short(&properties.message_id) {
        amqp = amqp.with_message_id(id);
    }
    if let Some(id) = short(&properties.correlation_id) {
        amqp = amqp.with_correlation_id(id);
    }
    if let Some(queue) = short(&properties.reply_to) {
        amqp = amqp.with_reply_to(queue);
    }
    amqp
}

/// The wire-protocol properties of an AMQP message. Header values may be long or short
/// strings; the deadline any integer type or a decimal string (as other clients send them).
pub fn from_amqp(amqp: &BasicProperties) -> Properties {
    let headers = amqp.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| h.inner().get(name));
    let header_text = |name: &str| header(name).and_then(string);
    let owned = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_owned());
    Properties {
        message_id: owned(amqp.message_id()),
        correlation_id: owned(amqp.correlation_id()),
        reply_to: owned(amqp.reply_to()),
        model: header_text(MODEL_HEADER),
        version: header_text(VERSION_HEADER),
        lane: header_text(LANE_HEADER).and_then(|lane| Lane::parse(&lane)),
        deadline_ms: header(DEADLINE_HEADER)
            .and_then(integer)
            .and_then(|ms| u64::try_from(ms).ok()),
        sent_ms: header(SENT_HEADER)
            .and_then(integer)
            .and_then(|ms| u64::try_from(ms).ok()),
        error_code: header_text(ERROR_CODE_HEADER).and_then(|code| ErrorCode::parse(&code)),
        error: header_text(ERROR_HEADER),
        blob_threshold: header(BLOB_THRESHOLD_HEADER)
            .and_then(integer)
            .and_then(|bytes| u64::try_from(bytes).ok()),
        claim_check: header_text(CLAIM_CHECK_HEADER),
        header_length: header(HEADER_LENGTH_HEADER)
            .and_then(integer)
            .and_then(|bytes| u64::try_from(bytes).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_never_shows_the_password() {
        let config = AmqpConfig::new("amqp://u:pw@h/v");
        assert!(!format!("{config:?}").contains("pw"));
    }

    #[tokio::test]
    async fn a_refused_connection_keeps_its_cause_and_hides_the_password() {
        // Port 1 on this host: nothing listens, the connection is refused at once.
        let error = AmqpTransport::connect(AmqpConfig::new("amqp://u:pw-x@127.0.0.1:1/%2f"))
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(matches!(error, TransportError::Unavailable { .. }));
        assert!(std::error::Error::source(&error).is_some(), "{error:?}");
        let logged = Chain(&error).to_string();
        assert!(logged.starts_with("transport unavailable: cannot connect to amqp://u:"));
        assert!(logged.to_lowercase().contains("refused"), "{logged}");
        assert!(!logged.contains("pw-x"), "{logged}");
    }

    #[test]
    fn properties_survive_the_amqp_mapping() {
        let properties = Properties {
            message_id: Some("m".into()),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            model: Some("digits".into()),
            version: Some("production".into()),
            lane: Some(Lane::Realtime),
            deadline_ms: Some(1_700_000_000_123),
            sent_ms: Some(1_700_000_000_001),
            error_code: Some(ErrorCode::DeadlineExceeded),
            error: Some("late".into()),
            blob_threshold: Some(1 << 20),
            claim_check: Some("az://results/m/x.json".into()),
            header_length: Some(120),
        };
        assert_eq!(from_amqp(&to_amqp(&properties)), properties);
    }

    #[test]
    fn headers_from_other_clients_are_read_leniently() {
        let mut headers = FieldTable::default();
        headers.insert(
            DEADLINE_HEADER.into(),
            AMQPValue::ShortString("1700000000000".into()),
        );
        headers.insert(LANE_HEADER.into(), AMQPValue::ShortString("batch".into()));
        headers.insert(MODEL_HEADER.into(), AMQPValue::LongInt(7));
        let properties = from_amqp(&BasicProperties::default().with_headers(headers));
        assert_eq!(properties.deadline_ms, Some(1_700_000_000_000));
        assert_eq!(properties.lane, Some(Lane::Batch));
        assert_eq!(properties.model, None);
    }
}
