//! The Azure Service Bus transport, over Service Bus's REST API through
//! `azure_messaging_servicebus` 0.21 (its `QueueClient`); queue management, which that crate
//! lacks, goes through the same HTTP client with the same SAS signing.
//!
//! - Requests are received with **peek-lock** only, and completed (deleted) once their result is
//!   sent; `requeue` unlocks (abandons); a delivery dropped unsettled is unlocked. While a
//!   delivery is held its lock is renewed at half its duration, so a long batch never loses it.
//! - `dead_letter` sends a copy carrying `ember-error-code`/`ember-error` to `ember.<model>.dead`,
//!   then completes the original: the REST API cannot dead-letter with a reason. Service Bus's own
//!   dead-letter queue (`<queue>/$DeadLetterQueue`) still takes what was delivered more than the
//!   queue's `MaxDeliveryCount` times (e.g. a request that kills every worker before it can be
//!   dead-lettered).
//! - The REST API receives one message per call: a subscription runs
//!   [`ServiceBusConfig::receivers`] long-polling receive calls per queue. Service Bus queues have
//!   no priorities, so realtime and batch are two queues; each has its own prefetch window and
//!   `next` hands out realtime first.
//! - `MessageId`, `CorrelationId` and `ReplyTo` are broker properties; the `ember-*` headers are
//!   custom properties (HTTP headers on the REST API; Service Bus quotes string values on
//!   receive). Bodies are UTF-8 text, the REST client's limit.
//! - A client's inbox is a queue `ember.inbox.<uuid>`, deleted when the inbox is dropped, and by
//!   Service Bus after 5 minutes idle (its minimum) should the client die.

use super::{
    ClientTransport, Delivery, Inbox, InboxSender, Message, Properties, Settle, Subscription,
    Transport, TransportError, headers, queues,
};
use crate::chain::Chain;
use crate::protocol::{ErrorCode, Lane};
use async_trait::async_trait;
use azure_core::auth::Secret;
use azure_core::headers::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, Headers};
use azure_core::{HttpClient, Method, Request, StatusCode, Url};
use azure_messaging_servicebus::service_bus::{
    PeekLockResponse, QueueClient, SendMessageOptions, SettableBrokerProperties,
};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Hosts of Service Bus namespaces in Azure's public cloud (the only ones the crate addresses).
pub const PUBLIC_CLOUD_SUFFIX: &str = ".servicebus.windows.net";
/// Prefix of the queues behind client inboxes.
pub const INBOX_PREFIX: &str = "ember.inbox.";
/// Why a queue could not be created with the policy given.
const FORBIDDEN: &str = "creating queues needs a policy with Manage rights";
/// The shortest auto-delete-on-idle Service Bus accepts.
const MIN_AUTO_DELETE: Duration = Duration::from_secs(300);
const API_VERSION: &str = "2021-05";
const SAS_LIFETIME: Duration = Duration::from_secs(3600);
const BROKER_PROPERTIES: HeaderName = HeaderName::from_static("brokerproperties");
const SEND_ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Replies an inbox holds before its receivers wait for the client to take some.
const INBOX_WINDOW: usize = 1024;

/// How to reach a Service Bus namespace, and how to receive from it.
#[derive(Clone)]
pub struct ServiceBusConfig {
    /// The namespace: `<namespace>.servicebus.windows.net`.
    pub namespace: String,
    /// Name of the shared access policy (Listen and Send; Manage to create queues).
    pub key_name: String,
    /// Its key (never logged).
    pub key: Secret,
    /// Send every request here instead of `https://<namespace>.servicebus.windows.net`, keeping
    /// path and query (another cloud's host, a private endpoint, a test double).
    pub endpoint: Option<Url>,
    /// Concurrent receive calls per queue of a subscription.
    pub receivers: usize,
    /// How long one receive call waits for a message (whole seconds; at least 1).
    pub poll: Duration,
    /// Lock duration of the queues Ember creates (at most 5 minutes).
    pub lock_duration: Duration,
    /// Deliveries after which Service Bus dead-letters a message itself (queues Ember creates).
    pub max_delivery_count: u32,
}

impl ServiceBusConfig {
    /// Defaults for a namespace and a SAS policy.
    pub fn new(
        namespace: impl Into<String>,
        key_name: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            key_name: key_name.into(),
            key: Secret::new(key.into()),
            endpoint: None,
            receivers: 8,
            poll: Duration::from_secs(2),
            lock_duration: Duration::from_secs(30),
            max_delivery_count: 10,
        }
    }

    /// From a connection string, as the Azure portal shows it:
    /// `Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<policy>;SharedAccessKey=<key>`.
    /// A host outside Azure's public cloud becomes the [`endpoint`](Self::endpoint).
    pub fn from_connection_string(connection: &str) -> Result<Self, ConnectionStringError> {
        let mut fields = HashMap::new();
        for part in connection.split(';').filter(|p| !p.trim().is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or(ConnectionStringError("a part is not Name=Value"))?;
            fields.insert(name.trim().to_ascii_lowercase(), value.trim());
        }
        let field = |name: &str, missing| {
            fields
                .get(name)
                .copied()
                .ok_or(ConnectionStringError(missing))
        };
        let endpoint = field("endpoint", "no Endpoint")?;
        let host = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(ConnectionStringError("Endpoint is not sb://<host>/"));
        }
        let mut config = Self::new(
            "",
            field("sharedaccesskeyname", "no SharedAccessKeyName")?,
            field("sharedaccesskey", "no SharedAccessKey")?,
        );
        match host.strip_suffix(PUBLIC_CLOUD_SUFFIX) {
            Some(namespace) => config.namespace = namespace.to_owned(),
            None => {
                config.namespace = host.split('.').next().unwrap_or(host).to_owned();
                config.endpoint = Some(
                    Url::parse(&format!("https://{host}/"))
                        .map_err(|_| ConnectionStringError("Endpoint is not sb://<host>/"))?,
                );
            }
        }
        Ok(config)
    }
}

impl std::fmt::Debug for ServiceBusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusConfig")
            .field("namespace", &self.namespace)
            .field("key_name", &self.key_name)
            .field("key", &"<secret>")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("receivers", &self.receivers)
            .field("poll", &self.poll)
            .field("lock_duration", &self.lock_duration)
            .field("max_delivery_count", &self.max_delivery_count)
            .finish()
    }
}

/// A connection string Ember cannot use; says what is wrong, never what it holds.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid Service Bus connection string: {0}")]
pub struct ConnectionStringError(&'static str);

/// An HTTP client sending every request to one endpoint instead of the host it names, keeping
/// path and query: how a client built for `*.servicebus.windows.net` reaches another host.
#[derive(Debug)]
pub struct Redirect {
    inner: Arc<dyn HttpClient>,
    endpoint: Url,
}

impl Redirect {
    /// Sends `inner`'s requests to `endpoint` (scheme, host and port).
    pub fn new(inner: Arc<dyn HttpClient>, endpoint: Url) -> Self {
        Self { inner, endpoint }
    }
}

#[async_trait]
impl HttpClient for Redirect {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<azure_core::Response> {
        let mut request = request.clone();
        let url = request.url_mut();
        let moved = url
            .set_scheme(self.endpoint.scheme())
            .and_then(|()| url.set_host(self.endpoint.host_str()).map_err(drop))
            .and_then(|()| url.set_port(self.endpoint.port()));
        if moved.is_err() {
            return Err(azure_core::Error::message(
                azure_core::error::ErrorKind::Other,
                format!("cannot send a request to {}", self.endpoint),
            ));
        }
        self.inner.execute_request(&request).await
    }
}

/// An HTTP client that keeps connections open between calls (the crate's default opens one per
/// call: a TCP and TLS handshake for every receive, complete and send).
pub fn pooled_http_client() -> Arc<dyn HttpClient> {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    Arc::new(client)
}

/// A Service Bus namespace as a [`Transport`].
#[derive(Clone)]
pub struct ServiceBusTransport {
    shared: Arc<Shared>,
}

struct Shared {
    http: Arc<dyn HttpClient>,
    config: ServiceBusConfig,
    reachable: AtomicBool,
}

impl ServiceBusTransport {
    /// A transport for `config`'s namespace, over pooled connections.
    pub fn new(config: ServiceBusConfig) -> Self {
        Self::with_http_client(pooled_http_client(), config)
    }

    /// A transport sending its requests through `http` (redirected to the config's endpoint).
    pub fn with_http_client(http: Arc<dyn HttpClient>, config: ServiceBusConfig) -> Self {
        let http = match &config.endpoint {
            Some(endpoint) => Arc::new(Redirect::new(http, endpoint.clone())),
            None => http,
        };
        Self {
            shared: Arc::new(Shared {
                http,
                config,
                reachable: AtomicBool::new(true),
            }),
        }
    }

    /// Messages in `queue` not yet completed, locked ones included: its runtime properties'
    /// `ActiveMessageCount`, what KEDA's azure-servicebus scaler scales on. `None` if there is
    /// no such queue.
    pub async fn active_messages(&self, queue: &str) -> Result<Option<u64>, TransportError> {
        let (status, body) = self.shared.manage(Method::Get, queue, None).await?;
        match status {
            200 => Ok(count_in(
                &String::from_utf8_lossy(&body),
                "ActiveMessageCount",
            )),
            404 => Ok(None),
            401 | 403 => Err(TransportError::topology(format!(
                "{queue}: reading its runtime properties needs a policy with Manage rights"
            ))),
            status => Err(TransportError::unavailable(format!(
                "{queue}: reading its runtime properties: Service Bus answered {status}"
            ))),
        }
    }
}

/// The number in the first `<...:name>N<` of an Atom entry (any namespace prefix); `None` where
/// there is none (Service Bus answers an empty feed for a missing entity).
fn count_in(entry: &str, name: &str) -> Option<u64> {
    let start = entry.match_indices(name).find_map(|(at, _)| {
        let before = entry[..at].chars().next_back()?;
        let after = entry[at + name.len()..].strip_prefix('>')?;
        (before == '<' || before == ':').then_some(after)
    })?;
    start[..start.find('<')?].trim().parse().ok()
}

/// The HTTP status Service Bus answered a failed call with, if it answered.
fn status_of(error: &azure_core::Error) -> Option<StatusCode> {
    match error.kind() {
        azure_core::error::ErrorKind::HttpResponse { status, .. } => Some(*status),
        _ => error.as_http_error().map(|e| e.status()),
    }
}

/// What a failed call means: no such queue, or Service Bus unreachable or refusing.
fn failure(queue: &str, doing: &str, error: azure_core::Error) -> TransportError {
    match status_of(&error) {
        Some(StatusCode::NotFound) => TransportError::Unroutable(format!("{queue}: no such queue")),
        Some(status) => TransportError::unavailable_by(
            format!(
                "{queue}: {doing}: Service Bus answered {} {status}",
                u16::from(status)
            ),
            error,
        ),
        None => TransportError::unavailable_by(format!("{queue}: {doing}"), error),
    }
}

impl Shared {
    fn client(&self, queue: &str) -> Result<QueueClient, TransportError> {
        let config = &self.config;
        QueueClient::new(
            self.http.clone(),
            &config.namespace,
            queue,
            &config.key_name,
            config.key.clone(),
        )
        .map_err(|e| TransportError::unavailable_by(format!("{queue}: creating a client"), e))
    }

    /// Records whether the namespace answered (readiness).
    fn observe<T>(&self, result: Result<T, TransportError>) -> Result<T, TransportError> {
        let answered = !matches!(result, Err(TransportError::Unavailable { .. }));
        self.reachable.store(answered, Ordering::Relaxed);
        result
    }

    /// Sends `message` to `queue`, retrying what may be transient.
    async fn send(&self, queue: &str, message: &Message) -> Result<(), TransportError> {
        let body = std::str::from_utf8(&message.body).map_err(|_| {
            TransportError::Unroutable(format!(
                "{queue}: the Service Bus REST API carries text, and this body is not UTF-8"
            ))
        })?;
        let client = self.client(queue)?;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let sent = client
                .send_message(body, Some(send_options(&message.properties)))
                .await
                .map_err(|e| failure(queue, "sending", e));
            match self.observe(sent) {
                Err(e @ TransportError::Unavailable { .. }) if attempt < SEND_ATTEMPTS => {
                    tracing::debug!(error = %Chain(&e), retry_in = ?backoff, "sending failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Locks the next message of `queue`, waiting up to the poll time for one.
    async fn receive(&self, queue: &str) -> Result<Option<PeekLockResponse>, TransportError> {
        let poll = Duration::from_secs(self.config.poll.as_secs().max(1));
        let received = self
            .client(queue)?
            .peek_lock_message2(Some(poll))
            .await
            .map_err(|e| failure(queue, "receiving", e))
            .and_then(|response| match u16::from(*response.status()) {
                200 | 201 => Ok(Some(response)),
                204 => Ok(None),
                404 => Err(TransportError::Unroutable(format!(
                    "{queue}: no such queue"
                ))),
                status => Err(TransportError::unavailable(format!(
                    "{queue}: receiving: Service Bus answered {status}"
                ))),
            });
        self.observe(received)
    }

    /// A management call on `queue` (the entity itself, not its messages): the status and
    /// the body.
    async fn manage(
        &self,
        method: Method,
        queue: &str,
        body: Option<String>,
    ) -> Result<(u16, Bytes), TransportError> {
        let resource = format!(
            "https://{}{PUBLIC_CLOUD_SUFFIX}/{queue}",
            self.config.namespace
        );
        let url = Url::parse(&format!("{resource}?api-version={API_VERSION}"))
            .map_err(|e| TransportError::topology_by(format!("{queue}: not a resource name"), e))?;
        let mut request = Request::new(url, method);
        request.insert_header(AUTHORIZATION, self.signature(&resource)?);
        match body {
            Some(body) => {
                request.insert_header(
                    CONTENT_TYPE,
                    "application/atom+xml;type=entry;charset=utf-8",
                );
                request.set_body(body);
            }
            None => {
                request.insert_header(CONTENT_LENGTH, "0");
                request.set_body(azure_core::EMPTY_BODY);
            }
        }
        let answered = async {
            let response = self.http.execute_request(&request).await?;
            let status = u16::from(response.status());
            Ok((status, response.into_body().collect().await?))
        }
        .await
        .map_err(|e: azure_core::Error| failure(queue, "managing", e));
        self.observe(answered)
    }

    /// A shared access signature for `resource`, valid for an hour.
    fn signature(&self, resource: &str) -> Result<String, TransportError> {
        let encode =
            |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        let resource = encode(resource);
        let expiry = (SystemTime::now() + SAS_LIFETIME)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // azure_core's HMAC takes its key base64-encoded; Service Bus signs with the key's text.
        let key = Secret::new(azure_core::base64::encode(self.config.key.secret()));
        let signature = azure_core::hmac::hmac_sha256(&format!("{resource}\n{expiry}"), &key)
            .map_err(|e| TransportError::unavailable_by("signing a request", e))?;
        Ok(format!(
            "SharedAccessSignature sr={resource}&sig={}&se={expiry}&skn={}",
            encode(&signature),
            self.config.key_name
        ))
    }

    /// Creates `queue` unless it exists (a topology error ending in [`FORBIDDEN`] if the
    /// policy may not).
    async fn create_queue(
        &self,
        queue: &str,
        auto_delete: Option<Duration>,
    ) -> Result<(), TransportError> {
        let description = queue_description(
            self.config.lock_duration,
            self.config.max_delivery_count,
            auto_delete,
        );
        match self.manage(Method::Put, queue, Some(description)).await?.0 {
            200 | 201 | 409 => Ok(()),
            401 | 403 => Err(TransportError::topology(format!("{queue}: {FORBIDDEN}"))),
            status => Err(TransportError::topology(format!(
                "{queue}: creating it: Service Bus answered {status}"
            ))),
        }
    }
}

/// The Atom entry creating a queue.
fn queue_description(
    lock_duration: Duration,
    max_delivery_count: u32,
    auto_delete: Option<Duration>,
) -> String {
    let auto_delete = auto_delete.map_or(String::new(), |idle| {
        format!(
            "<AutoDeleteOnIdle>PT{}S</AutoDeleteOnIdle>",
            idle.max(MIN_AUTO_DELETE).as_secs()
        )
    });
    format!(
        concat!(
            r#"<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/xml">"#,
            r#"<QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" "#,
            r#"xmlns:i="http://www.w3.org/2001/XMLSchema-instance">"#,
            "<LockDuration>PT{}S</LockDuration><MaxDeliveryCount>{}</MaxDeliveryCount>{}",
            "</QueueDescription></content></entry>"
        ),
        lock_duration.as_secs().clamp(5, 300),
        max_delivery_count.max(1),
        auto_delete
    )
}

/// A custom property value as an HTTP header allows: printable ASCII (others become `?`).
fn header_value(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// Broker and custom properties of an outgoing message.
fn send_options(properties: &Properties) -> SendMessageOptions {
    let mut custom = HashMap::new();
    let mut put = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            custom.insert(name.to_owned(), header_value(&value));
        }
    };
    put(headers::MODEL, properties.model.clone());
    put(headers::VERSION, properties.version.clone());
    put(
        headers::LANE,
        properties.lane.map(|l| l.as_str().to_owned()),
    );
    put(
        headers::DEADLINE,
        properties.deadline_ms.map(|ms| ms.to_string()),
    );
    put(headers::SENT, properties.sent_ms.map(|ms| ms.to_string()));
    put(
        headers::ERROR_CODE,
        properties.error_code.map(|c| c.as_str().to_owned()),
    );
    put(headers::ERROR, properties.error.clone());
    put(
        headers::BLOB_THRESHOLD,
        properties.blob_threshold.map(|b| b.to_string()),
    );
    put(headers::CLAIM_CHECK, properties.claim_check.clone());
    put(
        headers::HEADER_LENGTH,
        properties.header_length.map(|b| b.to_string()),
    );
    SendMessageOptions {
        content_type: Some("application/json".into()),
        broker_properties: Some(SettableBrokerProperties {
            message_id: properties.message_id.clone(),
            correlation_id: properties.correlation_id.clone(),
            reply_to: properties.reply_to.clone(),
            ..SettableBrokerProperties::default()
        }),
        custom_properties: Some(custom),
    }
}

/// The broker properties Ember reads (the crate's own struct lacks correlation id and reply-to).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BrokerProperties {
    message_id: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    #[serde(default)]
    delivery_count: u32,
}

/// A received message and how often Service Bus delivered it before.
fn received(locked: &PeekLockResponse) -> (Message, u32) {
    let headers: Headers = match locked.custom_properties() {
        Ok(headers) => headers,
        Err(never) => match never {},
    };
    let broker: BrokerProperties = headers
        .get_optional_str(&BROKER_PROPERTIES)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    let text = |name: &'static str| {
        headers
            .get_optional_str(&HeaderName::from_static(name))
            .map(|value| {
                let value = value.trim();
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
                    .to_owned()
            })
    };
    let number = |name| text(name).and_then(|value| value.parse().ok());
    let properties = Properties {
        message_id: broker.message_id,
        correlation_id: broker.correlation_id,
        reply_to: broker.reply_to,
        model: text(headers::MODEL),
        version: text(headers::VERSION),
        lane: text(headers::LANE).and_then(|lane| Lane::parse(&lane)),
        deadline_ms: number(headers::DEADLINE),
        sent_ms: number(headers::SENT),
        error_code: text(headers::ERROR_CODE).and_then(|code| ErrorCode::parse(&code)),
        error: text(headers::ERROR),
        blob_threshold: number(headers::BLOB_THRESHOLD),
        claim_check: text(headers::CLAIM_CHECK),
        header_length: number(headers::HEADER_LENGTH),
    };
    let message = Message {
        body: Bytes::from(locked.body()),
        properties,
    };
    (message, broker.delivery_count.saturating_sub(1))
}

/// How long the lock just taken lasts (at least a second).
fn lock_lasts(locked: &PeekLockResponse) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    locked
        .broker_properties()
        .and_then(|p| u64::try_from(p.locked_until_utc.unix_timestamp()).ok())
        .map_or(Duration::from_secs(1), |until| {
            Duration::from_secs(until.saturating_sub(now).max(1))
        })
}

#[async_trait]
impl Transport for ServiceBusTransport {
    async fn declare(&self, model: &str) -> Result<(), TransportError> {
        for queue in queues::all(model) {
            match self.shared.create_queue(&queue, None).await {
                // Workers may hold Listen and Send only: then the queues were made with the
                // namespace, and one missing shows when used.
                Err(TransportError::Topology { context, .. }) if context.ends_with(FORBIDDEN) => {
                    tracing::debug!(%queue, "not created: {FORBIDDEN}");
                }
                created => created?,
            }
        }
        Ok(())
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), TransportError> {
        self.shared.send(queue, &message).await
    }

    async fn subscribe(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        Ok(Box::new(ServiceBusSubscription::start(
            &self.shared,
            queues,
            prefetch,
        )))
    }

    fn connected(&self) -> bool {
        self.shared.reachable.load(Ordering::Relaxed)
    }

    /// The REST API carries text.
    fn carries_binary(&self) -> bool {
        false
    }
}

#[async_trait]
impl ClientTransport for ServiceBusTransport {
    async fn inbox(&self) -> Result<Inbox, TransportError> {
        let queue = format!("{INBOX_PREFIX}{}", uuid::Uuid::new_v4().simple());
        self.shared
            .create_queue(&queue, Some(MIN_AUTO_DELETE))
            .await?;
        let (replies, mut taken) = mpsc::channel(INBOX_WINDOW);
        for _ in 0..self.shared.config.receivers.max(1) {
            tokio::spawn(receive_replies(
                self.shared.clone(),
                queue.clone(),
                replies.clone(),
            ));
        }
        Ok(Inbox {
            sender: Arc::new(ServiceBusInboxSender {
                shared: self.shared.clone(),
                queue,
            }),
            replies: futures::stream::poll_fn(move |cx| taken.poll_recv(cx)).boxed(),
        })
    }

    async fn declare_queue(
        &self,
        queue: &str,
        expiry: Option<Duration>,
    ) -> Result<(), TransportError> {
        self.shared.create_queue(queue, expiry).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), TransportError> {
        match self.shared.manage(Method::Delete, queue, None).await?.0 {
            200 | 204 | 404 => Ok(()),
            status => Err(TransportError::topology(format!(
                "{queue}: deleting it: Service Bus answered {status}"
            ))),
        }
    }
}

/// Takes an inbox's replies (completing each) until the inbox is dropped or deleted.
async fn receive_replies(shared: Arc<Shared>, queue: String, replies: mpsc::Sender<Message>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let taken = tokio::select! {
            taken = shared.receive(&queue) => taken,
            () = replies.closed() => return,
        };
        match taken {
            Ok(Some(locked)) => {
                backoff = FIRST_BACKOFF;
                let (message, _) = received(&locked);
                if let Err(e) = locked.delete_message().await {
                    tracing::debug!(error = %Chain(&e), "cannot complete a reply; it may come twice");
                }
                if replies.send(message).await.is_err() {
                    return;
                }
            }
            Ok(None) => backoff = FIRST_BACKOFF,
            Err(TransportError::Unroutable(_)) => return,
            Err(e) => {
                tracing::debug!(error = %Chain(&e), retry_in = ?backoff, "cannot receive replies; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

struct ServiceBusInboxSender {
    shared: Arc<Shared>,
    queue: String,
}

#[async_trait]
impl InboxSender for ServiceBusInboxSender {
    async fn send(&self, queue: &str, mut message: Message) -> Result<(), TransportError> {
        message.properties.reply_to = Some(self.queue.clone());
        self.shared.send(queue, &message).await
    }
}

impl Drop for ServiceBusInboxSender {
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (shared, queue) = (self.shared.clone(), std::mem::take(&mut self.queue));
            runtime.spawn(async move {
                if let Err(e) = shared.manage(Method::Delete, &queue, None).await {
                    tracing::debug!(error = %Chain(&e), "cannot delete an inbox; Service Bus deletes it when idle");
                }
            });
        }
    }
}

/// Receivers per queue feeding one channel per queue; `next` takes from earlier queues first.
struct ServiceBusSubscription {
    lanes: Vec<mpsc::UnboundedReceiver<Delivery>>,
    receivers: Vec<JoinHandle<()>>,
    stopping: CancellationToken,
}

impl ServiceBusSubscription {
    fn start(shared: &Arc<Shared>, queues: &[String], prefetch: usize) -> Self {
        let prefetch = prefetch.max(1);
        let per_queue = shared.config.receivers.clamp(1, prefetch);
        let mut lanes = Vec::with_capacity(queues.len());
        let mut receivers = Vec::with_capacity(queues.len() * per_queue);
        let stopping = CancellationToken::new();
        for queue in queues {
            let (deliveries, lane) = mpsc::unbounded_channel();
            let window = Arc::new(Semaphore::new(prefetch));
            for _ in 0..per_queue {
                receivers.push(tokio::spawn(receive_requests(
                    shared.clone(),
                    queue.clone(),
                    window.clone(),
                    deliveries.clone(),
                    stopping.clone(),
                )));
            }
            lanes.push(lane);
        }
        Self {
            lanes,
            receivers,
            stopping,
        }
    }
}

/// One receiver: while the queue's window has room, locks the next message and hands it out;
/// until `stopping`, which a receive call under way does not cut short.
async fn receive_requests(
    shared: Arc<Shared>,
    queue: String,
    window: Arc<Semaphore>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    stopping: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let room = tokio::select! {
            biased;
            () = stopping.cancelled() => return,
            room = window.clone().acquire_owned() => room,
        };
        let Ok(room) = room else { return };
        match shared.receive(&queue).await {
            Ok(Some(locked)) => {
                backoff = FIRST_BACKOFF;
                let delivery = ServiceBusSettle::delivery(&shared, &queue, locked, room);
                if deliveries.send(delivery).is_err() {
                    return;
                }
            }
            Ok(None) => backoff = FIRST_BACKOFF,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), %queue, retry_in = ?backoff, "cannot receive; retrying");
                drop(room);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopping.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[async_trait]
impl Subscription for ServiceBusSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| {
            let mut open = false;
            for lane in &mut self.lanes {
                match lane.poll_recv(cx) {
                    Poll::Ready(Some(delivery)) => return Poll::Ready(Some(delivery)),
                    Poll::Ready(None) => {}
                    Poll::Pending => open = true,
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }

    /// Starts no more receive calls and waits for those under way (at most the poll time):
    /// what they lock is handed out still, and nothing sent after `stop` returns is taken.
    async fn stop(&mut self) {
        self.stopping.cancel();
        for receiver in self.receivers.drain(..) {
            let _ = receiver.await;
        }
    }
}

/// Dropped unstopped, receive calls are cut off: a message Service Bus locked for one stays
/// locked until its lock expires, then comes again.
impl Drop for ServiceBusSubscription {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
    }
}

/// A locked message: completed, unlocked or dead-lettered once; its lock renewed meanwhile.
struct ServiceBusSettle {
    shared: Arc<Shared>,
    lock: Arc<PeekLockResponse>,
    queue: String,
    message: Message,
    renewal: JoinHandle<()>,
    _room: OwnedSemaphorePermit,
    settled: bool,
}

impl ServiceBusSettle {
    fn delivery(
        shared: &Arc<Shared>,
        queue: &str,
        locked: PeekLockResponse,
        room: OwnedSemaphorePermit,
    ) -> Delivery {
        let (message, redeliveries) = received(&locked);
        let renew_every = lock_lasts(&locked) / 2;
        let lock = Arc::new(locked);
        let renewal = tokio::spawn(renew(lock.clone(), renew_every, queue.to_owned()));
        Delivery {
            message: message.clone(),
            queue: queue.to_owned(),
            redeliveries,
            settle: Box::new(Self {
                shared: shared.clone(),
                lock,
                queue: queue.to_owned(),
                message,
                renewal,
                _room: room,
                settled: false,
            }),
        }
    }

    fn settling(&mut self) {
        self.settled = true;
        self.renewal.abort();
    }

    async fn complete(&mut self) -> Result<(), TransportError> {
        self.settling();
        let completed = self.lock.delete_message().await.map(drop);
        completed.map_err(|e| lock_failure(&self.queue, "completing", e))
    }
}

/// A failed call on a lock: 404/410 mean the lock expired (the message comes again).
fn lock_failure(queue: &str, doing: &str, error: azure_core::Error) -> TransportError {
    match status_of(&error) {
        Some(StatusCode::NotFound | StatusCode::Gone) => TransportError::unavailable(format!(
            "{queue}: {doing}: the lock was lost; Service Bus delivers the message again"
        )),
        _ => failure(queue, doing, error),
    }
}

/// Renews `lock` every `every` until aborted, or until the lock is lost (the settle then fails
/// and Service Bus delivers the message again).
async fn renew(lock: Arc<PeekLockResponse>, every: Duration, queue: String) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = lock.renew_message_lock().await {
            let lost = matches!(status_of(&e), Some(StatusCode::NotFound | StatusCode::Gone));
            let error = lock_failure(&queue, "renewing a lock", e);
            tracing::warn!(%queue, error = %Chain(&error), "lock not renewed");
            if lost {
                return;
            }
        }
    }
}

#[async_trait]
impl Settle for ServiceBusSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.complete().await
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), TransportError> {
        self.settling();
        let unlocked = self.lock.unlock_message().await;
        unlocked.map_err(|e| lock_failure(&self.queue, "unlocking", e))
    }

    async fn dead_letter(
        mut self: Box<Self>,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), TransportError> {
        let mut letter = self.message.clone();
        letter.properties.error_code = Some(code);
        letter.properties.error = Some(reason.to_owned());
        // Unsent, the message stays locked and is unlocked on drop: it comes again.
        self.shared
            .send(&queues::dead_for(&self.queue), &letter)
            .await?;
        self.complete().await
    }
}

impl Drop for ServiceBusSettle {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.settled
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let lock = self.lock.clone();
            runtime.spawn(async move {
                if let Err(e) = lock.unlock_message().await {
                    tracing::debug!(error = %Chain(&e), "cannot unlock; the lock expires instead");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_counts_are_read_whatever_the_namespace_prefix() {
        // As Service Bus answers a queue's GET (shortened).
        let entry = concat!(
            r#"<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/xml">"#,
            r#"<QueueDescription><MessageCount>12</MessageCount><CountDetails "#,
            r#"xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus">"#,
            "<d2p1:ActiveMessageCount>9</d2p1:ActiveMessageCount>",
            "<d2p1:DeadLetterMessageCount>3</d2p1:DeadLetterMessageCount>",
            "</CountDetails></QueueDescription></content></entry>"
        );
        assert_eq!(count_in(entry, "ActiveMessageCount"), Some(9));
        assert_eq!(count_in(entry, "DeadLetterMessageCount"), Some(3));
        assert_eq!(count_in(entry, "MessageCount"), Some(12));
        assert_eq!(
            count_in(
                "<ActiveMessageCount>4</ActiveMessageCount>",
                "ActiveMessageCount"
            ),
            Some(4)
        );
        // A missing entity: an empty feed.
        let feed = r#"<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Publicly Listed Services</title></feed>"#;
        assert_eq!(count_in(feed, "ActiveMessageCount"), None);
    }

    #[test]
    fn connection_strings_name_the_namespace_and_policy() {
        let config = ServiceBusConfig::from_connection_string(
            "Endpoint=sb://ember-prod.servicebus.windows.net/;SharedAccessKeyName=worker;SharedAccessKey=a2V5PQ==",
        )
        .unwrap();
        assert_eq!(config.namespace, "ember-prod");
        assert_eq!(config.key_name, "worker");
        assert_eq!(config.key.secret(), "a2V5PQ==");
        assert!(config.endpoint.is_none());

        let china = ServiceBusConfig::from_connection_string(
            "Endpoint=sb://ns.servicebus.chinacloudapi.cn/;SharedAccessKeyName=p;SharedAccessKey=k",
        )
        .unwrap();
        assert_eq!(china.namespace, "ns");
        assert_eq!(
            china.endpoint.as_ref().map(Url::as_str),
            Some("https://ns.servicebus.chinacloudapi.cn/")
        );
    }

    #[test]
    fn bad_connection_strings_say_why_without_the_key() {
        for (connection, why) in [
            (
                "SharedAccessKeyName=p;SharedAccessKey=secret",
                "no Endpoint",
            ),
            (
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=secret",
                "no SharedAccessKeyName",
            ),
            (
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=p",
                "no SharedAccessKey",
            ),
            (
                "Endpoint=sb://ns.servicebus.windows.net/;secret",
                "a part is not Name=Value",
            ),
        ] {
            let error = ServiceBusConfig::from_connection_string(connection)
                .unwrap_err()
                .to_string();
            assert!(error.ends_with(why), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let config = ServiceBusConfig::new("ns", "p", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn custom_properties_are_header_safe() {
        let properties = Properties {
            error: Some("bad\ninput: π".into()),
            lane: Some(Lane::Realtime),
            deadline_ms: Some(17),
            ..Properties::default()
        };
        let options = send_options(&properties);
        let custom = options.custom_properties.unwrap();
        assert_eq!(custom[headers::ERROR], "bad?input: ?");
        assert_eq!(custom[headers::LANE], "realtime");
        assert_eq!(custom[headers::DEADLINE], "17");
    }

    #[test]
    fn created_queues_have_the_configured_lock_and_delivery_count() {
        let entry = queue_description(Duration::from_secs(45), 7, Some(Duration::from_secs(1)));
        assert!(
            entry.contains("<LockDuration>PT45S</LockDuration>"),
            "{entry}"
        );
        assert!(
            entry.contains("<MaxDeliveryCount>7</MaxDeliveryCount>"),
            "{entry}"
        );
        assert!(
            entry.contains("<AutoDeleteOnIdle>PT300S</AutoDeleteOnIdle>"),
            "{entry}"
        );
    }
}
