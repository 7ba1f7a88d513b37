//! The Service Bus transport against the local Service Bus REST **test double**
//! (`tests/common/servicebus.rs`): the shared transport suite, then what is Service Bus's own:
//! lock expiry and renewal, its dead-letter queue, SAS signatures, inboxes.

mod common;
mod transport_suite;

use azure_messaging_servicebus::service_bus::QueueClient;
use common::servicebus::{self, KEY, KEY_NAME, NAMESPACE, ServiceBusDouble};
use ember::client::chain::Chain;
use ember::protocol::{ErrorCode, Lane};
use ember::transport::servicebus::{Redirect, ServiceBusConfig, ServiceBusTransport};
use ember::transport::{ClientTransport, Message, Properties, Transport, TransportError, queues};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

fn transport() -> ServiceBusTransport {
    ServiceBusTransport::new(servicebus::config(ServiceBusDouble::shared()))
}

fn transport_with(configure: impl FnOnce(&mut ServiceBusConfig)) -> ServiceBusTransport {
    let mut config = servicebus::config(ServiceBusDouble::shared());
    configure(&mut config);
    ServiceBusTransport::new(config)
}

transport_suite!(async { transport() });

fn request(id: &str) -> Message {
    Message {
        body: bytes::Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        properties: Properties {
            message_id: Some(id.into()),
            ..Properties::default()
        },
    }
}

async fn next_within(
    sub: &mut Box<dyn ember::transport::Subscription>,
    wait: Duration,
) -> Option<ember::transport::Delivery> {
    tokio::time::timeout(wait, sub.next()).await.ok().flatten()
}

/// The crate's own client, reaching the double: a receiver that renews nothing (a worker that
/// died holding the lock).
fn raw_client(queue: &str) -> QueueClient {
    let double = ServiceBusDouble::shared();
    let http = Arc::new(Redirect::new(
        azure_core::new_http_client(),
        double.endpoint.parse().unwrap(),
    ));
    QueueClient::new(http, NAMESPACE, queue, KEY_NAME, KEY).unwrap()
}

#[tokio::test]
async fn an_expired_lock_redelivers_with_a_count() {
    let t = transport_with(|c| c.lock_duration = Duration::from_secs(5));
    let (queue, _) = transport_suite::unique(&t, "expiry", Lane::Batch).await;
    t.publish(&queue, request("held")).await.unwrap();
    // Locked and never settled or renewed, as by a worker killed with -9.
    let abandoned = raw_client(&queue)
        .peek_lock_message2(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(u16::from(*abandoned.status()), 201);
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    assert!(
        next_within(&mut sub, Duration::from_secs(3))
            .await
            .is_none(),
        "delivered while locked"
    );
    let again = next_within(&mut sub, Duration::from_secs(10))
        .await
        .expect("delivered again once the lock expired");
    assert_eq!(again.message.properties.message_id.as_deref(), Some("held"));
    assert_eq!(again.redeliveries, 1);
    again.settle.ack().await.unwrap();
}

#[tokio::test]
async fn a_held_delivery_keeps_its_lock_until_settled() {
    let t = transport_with(|c| c.lock_duration = Duration::from_secs(5));
    let (queue, _) = transport_suite::unique(&t, "renewal", Lane::Batch).await;
    t.publish(&queue, request("long")).await.unwrap();
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    let held = next_within(&mut sub, Duration::from_secs(10))
        .await
        .unwrap();
    // Three lock durations of work: without renewal another receiver would get it.
    let mut other = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    assert!(
        next_within(&mut other, Duration::from_secs(15))
            .await
            .is_none(),
        "the lock lapsed while the delivery was held"
    );
    held.settle.ack().await.expect("the lock is still held");
    drop(other);
    assert_eq!(ServiceBusDouble::shared().depth(&queue), 0);
}

#[tokio::test]
async fn past_max_delivery_count_service_bus_dead_letters_it() {
    let t = transport_with(|c| c.max_delivery_count = 2);
    let (queue, _) = transport_suite::unique(&t, "maxdelivery", Lane::Batch).await;
    t.publish(&queue, request("poison")).await.unwrap();
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    for _ in 0..2 {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .unwrap();
        d.settle.requeue().await.unwrap();
    }
    assert!(
        next_within(&mut sub, Duration::from_secs(2))
            .await
            .is_none()
    );
    assert_eq!(
        ServiceBusDouble::shared().dead_letters(&queue),
        [("poison".to_owned(), "MaxDeliveryCountExceeded".to_owned())]
    );
}

#[tokio::test]
async fn dead_letters_keep_the_request_and_its_properties() {
    let t = transport();
    let (queue, model) = transport_suite::unique(&t, "deadprops", Lane::Realtime).await;
    let mut sent = request("bad");
    sent.properties.reply_to = Some("somewhere".into());
    sent.properties.lane = Some(Lane::Realtime);
    sent.properties.deadline_ms = Some(4_102_444_800_000);
    t.publish(&queue, sent.clone()).await.unwrap();
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    let d = next_within(&mut sub, Duration::from_secs(10))
        .await
        .unwrap();
    d.settle
        .dead_letter(
            ErrorCode::InvalidArgument,
            "shape [3] is not [1, 784]\nsee docs",
        )
        .await
        .unwrap();
    let mut dead = t.subscribe(&[queues::dead(&model)], 10).await.unwrap();
    let letter = next_within(&mut dead, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(letter.message.body, sent.body);
    assert_eq!(
        letter.message.properties.reply_to.as_deref(),
        Some("somewhere")
    );
    assert_eq!(
        letter.message.properties.deadline_ms,
        sent.properties.deadline_ms
    );
    assert_eq!(
        letter.message.properties.error_code,
        Some(ErrorCode::InvalidArgument)
    );
    // Custom properties are HTTP headers: the line break is replaced.
    assert_eq!(
        letter.message.properties.error.as_deref(),
        Some("shape [3] is not [1, 784]?see docs")
    );
    letter.settle.ack().await.unwrap();
    assert_eq!(ServiceBusDouble::shared().depth(&queue), 0);
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_the_status_and_without_the_key() {
    let t = transport_with(|c| c.key = azure_core::auth::Secret::new("bm90LXRoZS1rZXk="));
    let error = t
        .publish("ember.anything.batch", request("1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransportError::Unavailable { .. }),
        "{error:?}"
    );
    // What reaches the log: the error, its causes and their debug form.
    let text = format!("{} {error:?}", Chain(&error));
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("bm90LXRoZS1rZXk="), "{text}");
    assert!(!t.connected(), "readiness must see the refusal");
}

#[tokio::test]
async fn a_missing_queue_is_unroutable() {
    let error = transport()
        .publish("ember.nobody-declared-this.batch", request("1"))
        .await
        .unwrap_err();
    assert!(matches!(error, TransportError::Unroutable(_)), "{error:?}");
}

#[tokio::test]
async fn an_inbox_gets_its_answers_and_is_deleted_with_it() {
    let t = transport();
    let (queue, _) = transport_suite::unique(&t, "inbox", Lane::Realtime).await;
    let mut inbox = t.inbox().await.unwrap();
    inbox.sender.send(&queue, request("ask")).await.unwrap();
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    let asked = next_within(&mut sub, Duration::from_secs(10))
        .await
        .unwrap();
    let reply_to = asked.message.properties.reply_to.clone().unwrap();
    assert!(reply_to.starts_with("ember.inbox."), "{reply_to}");
    let answer = Message {
        body: bytes::Bytes::from_static(b"{\"outputs\":[]}"),
        properties: Properties {
            correlation_id: Some("ask".into()),
            ..Properties::default()
        },
    };
    t.publish(&reply_to, answer).await.unwrap();
    asked.settle.ack().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), inbox.replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.properties.correlation_id.as_deref(), Some("ask"));
    drop(inbox);
    let double = ServiceBusDouble::shared();
    for _ in 0..50 {
        if !double.exists(&reply_to) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{reply_to} outlived its inbox");
}

#[tokio::test]
async fn active_messages_count_locked_ones_until_completed() {
    let t = transport();
    let (queue, _) = transport_suite::unique(&t, "active", Lane::Batch).await;
    for id in ["a", "b", "c"] {
        t.publish(&queue, request(id)).await.unwrap();
    }
    assert_eq!(t.active_messages(&queue).await.unwrap(), Some(3));
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 1).await.unwrap();
    let held = next_within(&mut sub, Duration::from_secs(10))
        .await
        .unwrap();
    // Locked by a worker: still active (KEDA keeps that worker).
    assert_eq!(t.active_messages(&queue).await.unwrap(), Some(3));
    held.settle.ack().await.unwrap();
    assert_eq!(t.active_messages(&queue).await.unwrap(), Some(2));
    assert_eq!(
        t.active_messages("ember.no-such-queue").await.unwrap(),
        None
    );
}
