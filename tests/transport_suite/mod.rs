//! The behaviour every transport must have, written once. A transport's test file calls
//! `transport_suite!(async_factory)` to run every case against a fresh transport.
//!
//! Queue names are unique per case (`unique`) so the suite can run against a shared broker.

use bytes::Bytes;
use ember::protocol::{ErrorCode, Lane};
use ember::transport::{Delivery, Message, Properties, Subscription, Transport, queues};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A model no other case uses, its queues declared on `t`: its `lane` queue and its name.
pub async fn unique(t: &impl Transport, case: &str, lane: Lane) -> (String, String) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let model = format!(
        "suite-{case}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    t.declare(&model).await.unwrap();
    (queues::requests(&model, lane), model)
}

fn message(id: &str) -> Message {
    Message {
        body: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        properties: Properties {
            message_id: Some(id.into()),
            correlation_id: Some(format!("corr-{id}")),
            reply_to: Some("replies".into()),
            model: Some("digits".into()),
            version: Some("production".into()),
            lane: Some(Lane::Batch),
            deadline_ms: Some(1_700_000_000_000),
            ..Properties::default()
        },
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("subscription open")
}

async fn nothing_within(sub: &mut Box<dyn Subscription>, wait: Duration) -> bool {
    tokio::time::timeout(wait, sub.next()).await.is_err()
}

pub async fn round_trip_preserves_body_and_properties(t: impl Transport) {
    let (queue, _) = unique(&t, "roundtrip", Lane::Batch).await;
    let sent = message("1");
    t.publish(&queue, sent.clone()).await.unwrap();
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    let got = next(&mut sub).await;
    assert_eq!(got.message, sent);
    assert_eq!(got.queue, queue);
    assert_eq!(got.redeliveries, 0);
    got.settle.ack().await.unwrap();
}

pub async fn ack_removes_the_message(t: impl Transport) {
    let (queue, _) = unique(&t, "ack", Lane::Batch).await;
    t.publish(&queue, message("1")).await.unwrap();
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    next(&mut sub).await.settle.ack().await.unwrap();
    drop(sub);
    let mut again = t.subscribe(&[queue], 10).await.unwrap();
    assert!(nothing_within(&mut again, Duration::from_millis(300)).await);
}

pub async fn requeue_redelivers_with_a_count(t: impl Transport) {
    let (queue, _) = unique(&t, "requeue", Lane::Batch).await;
    t.publish(&queue, message("1")).await.unwrap();
    let mut sub = t.subscribe(&[queue], 10).await.unwrap();
    next(&mut sub).await.settle.requeue().await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!(again.message.properties.message_id.as_deref(), Some("1"));
    assert!(again.redeliveries >= 1);
    again.settle.ack().await.unwrap();
}

pub async fn unsettled_delivery_is_redelivered_when_dropped(t: impl Transport) {
    let (queue, _) = unique(&t, "drop", Lane::Batch).await;
    t.publish(&queue, message("1")).await.unwrap();
    {
        let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
        let delivery = next(&mut sub).await;
        drop(delivery);
        drop(sub);
    }
    let mut sub = t.subscribe(&[queue], 10).await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!(again.message.properties.message_id.as_deref(), Some("1"));
    again.settle.ack().await.unwrap();
}

pub async fn dead_letter_carries_the_reason(t: impl Transport) {
    let (queue, model) = unique(&t, "dead", Lane::Batch).await;
    t.publish(&queue, message("1")).await.unwrap();
    let mut sub = t.subscribe(&[queue], 10).await.unwrap();
    next(&mut sub)
        .await
        .settle
        .dead_letter(ErrorCode::Internal, "model crashed")
        .await
        .unwrap();
    let mut dead = t.subscribe(&[queues::dead(&model)], 10).await.unwrap();
    let letter = next(&mut dead).await;
    assert_eq!(letter.message.properties.message_id.as_deref(), Some("1"));
    assert_eq!(
        letter.message.properties.error_code,
        Some(ErrorCode::Internal)
    );
    assert_eq!(
        letter.message.properties.error.as_deref(),
        Some("model crashed")
    );
    letter.settle.ack().await.unwrap();
}

pub async fn earlier_queues_are_drained_first(t: impl Transport) {
    let (batch, model) = unique(&t, "priority", Lane::Batch).await;
    let realtime = queues::requests(&model, Lane::Realtime);
    for i in 0..3 {
        t.publish(&batch, message(&format!("b{i}"))).await.unwrap();
    }
    for i in 0..3 {
        t.publish(&realtime, message(&format!("r{i}")))
            .await
            .unwrap();
    }
    // Priority holds among the deliveries a subscription has taken: let it take them all.
    let mut sub = t.subscribe(&[realtime, batch], 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let d = next(&mut sub).await;
        order.push(d.message.properties.message_id.clone().unwrap());
        d.settle.ack().await.unwrap();
    }
    // Within a queue, a broker with concurrent receivers (Service Bus) may reorder.
    order[..3].sort();
    order[3..].sort();
    assert_eq!(order, ["r0", "r1", "r2", "b0", "b1", "b2"]);
}

pub async fn prefetch_bounds_unsettled_deliveries(t: impl Transport) {
    let (queue, _) = unique(&t, "prefetch", Lane::Batch).await;
    for i in 0..5 {
        t.publish(&queue, message(&i.to_string())).await.unwrap();
    }
    let mut sub = t.subscribe(&[queue], 2).await.unwrap();
    let first = next(&mut sub).await;
    let _second = next(&mut sub).await;
    assert!(
        nothing_within(&mut sub, Duration::from_millis(300)).await,
        "a third delivery before settling"
    );
    first.settle.ack().await.unwrap();
    let third = next(&mut sub).await;
    assert_eq!(third.message.properties.message_id.as_deref(), Some("2"));
}

pub async fn stop_ends_the_subscription_and_leaves_the_rest_queued(t: impl Transport) {
    let (queue, _) = unique(&t, "stop", Lane::Batch).await;
    for i in 0..3 {
        t.publish(&queue, message(&i.to_string())).await.unwrap();
    }
    let mut sub = t.subscribe(std::slice::from_ref(&queue), 10).await.unwrap();
    let first = next(&mut sub).await;
    sub.stop().await;
    t.publish(&queue, message("after-stop")).await.unwrap();
    // What was taken before `stop` may still come, then the subscription ends.
    let mut taken = vec![first];
    while let Some(d) = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the stopped subscription ends")
    {
        taken.push(d);
    }
    let ids: Vec<String> = taken
        .iter()
        .map(|d| d.message.properties.message_id.clone().unwrap())
        .collect();
    assert!(!ids.contains(&"after-stop".to_owned()), "{ids:?}");
    for d in taken {
        d.settle.ack().await.unwrap();
    }
    drop(sub);
    let mut rest = t.subscribe(&[queue], 10).await.unwrap();
    let mut left = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), rest.next()).await {
        left.push(d.message.properties.message_id.clone().unwrap());
        d.settle.ack().await.unwrap();
    }
    assert_eq!(ids.len() + left.len(), 4, "taken {ids:?}, left {left:?}");
    assert!(left.contains(&"after-stop".to_owned()));
}

/// Expands to one `#[tokio::test]` per case, each with a transport from `$factory`.
#[macro_export]
macro_rules! transport_suite {
    ($factory:expr) => {
        $crate::transport_suite!(@cases $factory;
            round_trip_preserves_body_and_properties,
            ack_removes_the_message,
            requeue_redelivers_with_a_count,
            unsettled_delivery_is_redelivered_when_dropped,
            dead_letter_carries_the_reason,
            earlier_queues_are_drained_first,
            prefetch_bounds_unsettled_deliveries,
            stop_ends_the_subscription_and_leaves_the_rest_queued,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                transport_suite::$case($factory.await).await;
            }
        )*
    };
}
