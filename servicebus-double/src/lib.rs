//! A **test double** of Azure Service Bus's REST API: a local HTTP server implementing the
//! documented semantics of the calls Ember's transport makes. It is not Service Bus; what it
//! verifies is that Ember drives those semantics correctly.
//!
//! - `POST /{queue}/messages`: send (`BrokerProperties` JSON header; other headers are custom
//!   properties); 201, or 404 for a missing queue.
//! - `POST /{queue}/messages/head?timeout=N`: peek-lock, long-polling up to N seconds; 201 with
//!   the body, `BrokerProperties` (delivery count, lock token, `LockedUntilUtc`, ...), the lock's
//!   URL in `Location`, and custom properties as headers (strings quoted); 204 when none came.
//! - `DELETE`/`PUT`/`POST /{queue}/messages/{sequence}/{lock}`: complete / unlock / renew; 404
//!   once the lock is lost.
//! - `PUT /{queue}` with an Atom `QueueDescription` (`LockDuration`, `MaxDeliveryCount`): create,
//!   409 if it exists; `DELETE /{queue}`: delete, 404 if missing.
//! - `GET /{queue}`: its runtime properties as an Atom `QueueDescription` (what KEDA's
//!   azure-servicebus scaler reads): `MessageCount` and `CountDetails` with
//!   `ActiveMessageCount` (available and locked: a message stays active until completed) and
//!   `DeadLetterMessageCount`; 404 if missing.
//! - Locks expire after the queue's lock duration and the message is delivered again with its
//!   delivery count raised; a message whose lock is lost or released after `MaxDeliveryCount`
//!   deliveries moves to `{queue}/$DeadLetterQueue` (reason `MaxDeliveryCountExceeded`).
//! - Every call needs a valid SAS token (`sr`, `se`, `skn`, HMAC-SHA256 `sig`) of the one policy;
//!   401 otherwise.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The policy name the double accepts.
pub const KEY_NAME: &str = "ember-test";
/// Its key.
pub const KEY: &str = "c2VydmljZWJ1cy1kb3VibGUta2V5";
/// The namespace it pretends to be.
pub const NAMESPACE: &str = "ember-double";

/// Headers that are HTTP's or the API's, not custom properties.
const NOT_CUSTOM: &[&str] = &[
    "authorization",
    "brokerproperties",
    "content-type",
    "content-length",
    "host",
    "accept",
    "accept-encoding",
    "user-agent",
    "connection",
    "transfer-encoding",
    "expect",
];

#[derive(Clone)]
struct Stored {
    sequence: u64,
    body: Bytes,
    message_id: String,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    custom: Vec<(String, String)>,
    delivery_count: u32,
    enqueued: SystemTime,
}

struct Queue {
    lock_duration: Duration,
    max_delivery_count: u32,
    available: VecDeque<Stored>,
    locked: HashMap<String, (Stored, Instant)>,
}

impl Queue {
    fn new(lock_duration: Duration, max_delivery_count: u32) -> Self {
        Self {
            lock_duration,
            max_delivery_count,
            available: VecDeque::new(),
            locked: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct State {
    queues: Mutex<BTreeMap<String, Queue>>,
    sequence: std::sync::atomic::AtomicU64,
    locks: std::sync::atomic::AtomicU64,
}

/// A running double.
pub struct ServiceBusDouble {
    /// `http://127.0.0.1:<port>`: where the transport's requests go.
    pub endpoint: String,
    state: Arc<State>,
}

fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}/$deadletterqueue")
}

impl ServiceBusDouble {
    /// The process's double, started on first use.
    pub fn shared() -> &'static Self {
        static DOUBLE: std::sync::OnceLock<ServiceBusDouble> = std::sync::OnceLock::new();
        DOUBLE.get_or_init(Self::start)
    }

    /// A new double on a free port of 127.0.0.1, serving from its own thread until the
    /// process ends.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let endpoint = format!("http://{}", listener.local_addr().expect("a bound socket"));
        let state = Arc::new(State::default());
        let app = axum::Router::new().fallback({
            let state = state.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { handle(&state, method, uri, headers, body).await }
            }
        });
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                axum::serve(listener, app).await.expect("the double serves");
            });
        });
        Self { endpoint, state }
    }

    /// The environment an `ember` process needs to use the double.
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("EMBER_TRANSPORT", "servicebus".into()),
            ("EMBER_SERVICEBUS_NAMESPACE", NAMESPACE.into()),
            ("EMBER_SERVICEBUS_SAS_KEY_NAME", KEY_NAME.into()),
            ("EMBER_SERVICEBUS_SAS_KEY", KEY.into()),
            ("EMBER_SERVICEBUS_ENDPOINT", self.endpoint.clone()),
        ]
    }

    /// Messages in `queue`, locked or not.
    pub fn depth(&self, queue: &str) -> usize {
        let queues = self.state.queues.lock().unwrap();
        queues
            .get(&queue.to_ascii_lowercase())
            .map_or(0, |q| q.available.len() + q.locked.len())
    }

    /// Message ids and dead-letter reasons in Service Bus's dead-letter queue of `queue`.
    pub fn dead_letters(&self, queue: &str) -> Vec<(String, String)> {
        expire(&self.state);
        let queues = self.state.queues.lock().unwrap();
        queues
            .get(&dead_letter_queue(&queue.to_ascii_lowercase()))
            .map_or_else(Vec::new, |q| {
                q.available
                    .iter()
                    .map(|m| {
                        let reason = m
                            .custom
                            .iter()
                            .find(|(name, _)| name == "deadletterreason")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        (m.message_id.clone(), reason)
                    })
                    .collect()
            })
    }

    /// Whether `queue` exists.
    pub fn exists(&self, queue: &str) -> bool {
        let queues = self.state.queues.lock().unwrap();
        queues.contains_key(&queue.to_ascii_lowercase())
    }
}

/// Returns messages whose lock expired to their queue, or to its dead-letter queue once they
/// were delivered `MaxDeliveryCount` times.
fn expire(state: &State) {
    let now = Instant::now();
    let mut queues = state.queues.lock().unwrap();
    let mut dead = Vec::new();
    for (name, queue) in queues.iter_mut() {
        let expired: Vec<String> = queue
            .locked
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(token, _)| token.clone())
            .collect();
        for token in expired {
            let (message, _) = queue.locked.remove(&token).unwrap();
            release(name, queue, message, &mut dead);
        }
    }
    file_dead_letters(&mut queues, dead);
}

/// Adds dead letters to their dead-letter queues (made on first use, as Service Bus's are).
fn file_dead_letters(queues: &mut BTreeMap<String, Queue>, dead: Vec<(String, Stored)>) {
    for (name, message) in dead {
        queues
            .entry(name)
            .or_insert_with(|| Queue::new(Duration::from_secs(60), u32::MAX))
            .available
            .push_back(message);
    }
}

/// Puts a message whose lock ended back in order, or aside as a dead letter.
fn release(name: &str, queue: &mut Queue, mut message: Stored, dead: &mut Vec<(String, Stored)>) {
    if message.delivery_count >= queue.max_delivery_count {
        message
            .custom
            .push(("deadletterreason".into(), "MaxDeliveryCountExceeded".into()));
        dead.push((dead_letter_queue(name), message));
    } else {
        let at = queue
            .available
            .iter()
            .position(|m| m.sequence > message.sequence)
            .unwrap_or(queue.available.len());
        queue.available.insert(at, message);
    }
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

/// Whether `headers` carry a valid SAS token of the policy for `path`.
fn authorized(headers: &HeaderMap, path: &str) -> bool {
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("SharedAccessSignature "))
    else {
        return false;
    };
    let fields: HashMap<String, String> = url::form_urlencoded::parse(token.as_bytes())
        .into_owned()
        .collect();
    let (Some(resource), Some(signature), Some(expiry), Some(name)) = (
        fields.get("sr"),
        fields.get("sig"),
        fields.get("se"),
        fields.get("skn"),
    ) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = azure_core::auth::Secret::new(azure_core::base64::encode(KEY));
    let encoded: String = url::form_urlencoded::byte_serialize(resource.as_bytes()).collect();
    let expected = azure_core::hmac::hmac_sha256(&format!("{encoded}\n{expiry}"), &key).unwrap();
    let scope = format!("https://{NAMESPACE}.servicebus.windows.net/");
    let resource = resource.to_ascii_lowercase();
    let resource_path = resource.split('?').next().unwrap_or_default();
    name == KEY_NAME
        && *signature == expected
        && expiry.parse::<u64>().is_ok_and(|se| se > now)
        && resource_path
            .strip_prefix(&scope)
            .is_some_and(|scoped| path.starts_with(scoped.trim_end_matches('/')))
}

async fn handle(
    state: &Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/').to_ascii_lowercase();
    if !authorized(&headers, &path) {
        return status(StatusCode::UNAUTHORIZED);
    }
    expire(state);
    if let Some(queue) = path.strip_suffix("/messages/head") {
        if method != Method::POST {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let timeout = uri
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "timeout")
                    .and_then(|(_, v)| v.parse().ok())
            })
            .unwrap_or(60);
        return peek_lock(state, queue, Duration::from_secs(timeout)).await;
    }
    if let Some(queue) = path.strip_suffix("/messages") {
        return send(state, queue, &headers, body);
    }
    if let Some((queue, lock)) = path.split_once("/messages/") {
        let Some((_, token)) = lock.split_once('/') else {
            return status(StatusCode::NOT_FOUND);
        };
        return settle(state, queue, token, &method);
    }
    manage(state, &path, &method, &body)
}

fn send(state: &State, queue: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let broker: serde_json::Value = headers
        .get("brokerproperties")
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        .unwrap_or_default();
    let text = |name: &str| broker.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let sequence = state
        .sequence
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    let custom = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !NOT_CUSTOM.contains(&name) && !name.starts_with("x-ms-")
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let message = Stored {
        sequence,
        body,
        message_id: text("MessageId").unwrap_or_else(|| format!("{sequence:032x}")),
        correlation_id: text("CorrelationId"),
        reply_to: text("ReplyTo"),
        custom,
        delivery_count: 0,
        enqueued: SystemTime::now(),
    };
    let mut queues = state.queues.lock().unwrap();
    match queues.get_mut(queue) {
        Some(queue) => {
            queue.available.push_back(message);
            status(StatusCode::CREATED)
        }
        None => status(StatusCode::NOT_FOUND),
    }
}

/// A custom property's value as Service Bus returns it: numbers bare, strings quoted.
fn property_value(value: &str) -> String {
    if value.parse::<f64>().is_ok() {
        value.to_owned()
    } else {
        format!("\"{value}\"")
    }
}

async fn peek_lock(state: &State, queue: &str, timeout: Duration) -> Response {
    let give_up = Instant::now() + timeout;
    loop {
        {
            let mut queues = state.queues.lock().unwrap();
            let Some(q) = queues.get_mut(queue) else {
                return status(StatusCode::NOT_FOUND);
            };
            if let Some(mut message) = q.available.pop_front() {
                message.delivery_count += 1;
                let token = format!(
                    "{:08x}-0000-4000-8000-{:012x}",
                    message.sequence,
                    state
                        .locks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let locked_until = SystemTime::now() + q.lock_duration;
                q.locked.insert(
                    token.clone(),
                    (message.clone(), Instant::now() + q.lock_duration),
                );
                return locked_response(queue, &message, &token, locked_until);
            }
        }
        if Instant::now() >= give_up {
            return status(StatusCode::NO_CONTENT);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        expire(state);
    }
}

fn locked_response(
    queue: &str,
    message: &Stored,
    token: &str,
    locked_until: SystemTime,
) -> Response {
    let mut broker = serde_json::json!({
        "DeliveryCount": message.delivery_count,
        "EnqueuedSequenceNumber": 0,
        "EnqueuedTimeUtc": httpdate::fmt_http_date(message.enqueued),
        "LockToken": token,
        "LockedUntilUtc": httpdate::fmt_http_date(locked_until),
        "MessageId": message.message_id,
        "SequenceNumber": message.sequence,
        "State": "Active",
        "TimeToLive": 922_337_203_685.477_5,
    });
    if let Some(id) = &message.correlation_id {
        broker["CorrelationId"] = id.clone().into();
    }
    if let Some(queue) = &message.reply_to {
        broker["ReplyTo"] = queue.clone().into();
    }
    let mut response = (StatusCode::CREATED, message.body.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        "brokerproperties",
        HeaderValue::from_str(&broker.to_string()).unwrap(),
    );
    // As Service Bus does: the namespace's public URL (clients sign it).
    let location = format!(
        "https://{NAMESPACE}.servicebus.windows.net/{queue}/messages/{}/{token}",
        message.sequence
    );
    headers.insert("location", HeaderValue::from_str(&location).unwrap());
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    for (name, value) in &message.custom {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&property_value(value)),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

fn settle(state: &State, queue: &str, token: &str, method: &Method) -> Response {
    if ![Method::DELETE, Method::PUT, Method::POST].contains(method) {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mut queues = state.queues.lock().unwrap();
    let mut dead = Vec::new();
    let Some(q) = queues.get_mut(queue) else {
        return status(StatusCode::NOT_FOUND);
    };
    let Some((message, _)) = q.locked.remove(token) else {
        return status(StatusCode::NOT_FOUND);
    };
    match *method {
        Method::DELETE => {}
        Method::PUT => release(queue, q, message, &mut dead),
        _ => {
            let until = Instant::now() + q.lock_duration;
            q.locked.insert(token.to_owned(), (message, until));
        }
    }
    file_dead_letters(&mut queues, dead);
    status(StatusCode::OK)
}

/// The number in `<element>PT<n>S</element>` or `<element><n></element>`.
fn element(description: &str, name: &str) -> Option<u64> {
    let start = description.find(&format!("<{name}>"))? + name.len() + 2;
    let rest = &description[start..];
    let value = &rest[..rest.find('<')?];
    value
        .trim_start_matches("PT")
        .trim_end_matches('S')
        .parse()
        .ok()
}

fn manage(state: &State, queue: &str, method: &Method, body: &Bytes) -> Response {
    let mut queues = state.queues.lock().unwrap();
    match *method {
        Method::PUT => {
            if queues.contains_key(queue) {
                return status(StatusCode::CONFLICT);
            }
            let description = String::from_utf8_lossy(body);
            let lock = element(&description, "LockDuration").unwrap_or(60);
            let max_delivery_count = element(&description, "MaxDeliveryCount").unwrap_or(10);
            queues.insert(
                queue.to_owned(),
                Queue::new(Duration::from_secs(lock), max_delivery_count as u32),
            );
            (StatusCode::CREATED, description.into_owned()).into_response()
        }
        Method::DELETE => match queues.remove(queue) {
            Some(_) => status(StatusCode::OK),
            None => status(StatusCode::NOT_FOUND),
        },
        Method::GET => {
            let count = |name: &str| queues.get(name).map(|q| q.available.len() + q.locked.len());
            let Some(active) = count(queue) else {
                return status(StatusCode::NOT_FOUND);
            };
            let dead = count(&dead_letter_queue(queue)).unwrap_or(0);
            let q = &queues[queue];
            let description = format!(
                r#"<entry xmlns="http://www.w3.org/2005/Atom"><title type="text">{queue}</title><content type="application/xml"><QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><LockDuration>PT{}S</LockDuration><MaxDeliveryCount>{}</MaxDeliveryCount><MessageCount>{}</MessageCount><CountDetails xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus"><d2p1:ActiveMessageCount>{active}</d2p1:ActiveMessageCount><d2p1:DeadLetterMessageCount>{dead}</d2p1:DeadLetterMessageCount><d2p1:ScheduledMessageCount>0</d2p1:ScheduledMessageCount><d2p1:TransferMessageCount>0</d2p1:TransferMessageCount><d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount></CountDetails></QueueDescription></content></entry>"#,
                q.lock_duration.as_secs(),
                q.max_delivery_count,
                active + dead,
            );
            let mut response = (StatusCode::OK, description).into_response();
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/atom+xml;type=entry;charset=utf-8"),
            );
            response
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED),
    }
}
