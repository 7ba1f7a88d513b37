//! The ceilings every Ember figure is divided by, measured in the same run:
//! - `raw-broker`: a minimal lapin publish → consume → ack loop, same bodies and prefetch;
//! - `in-process`: the model run directly on batches (no transport, decoding or batching).

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Publishes awaiting their confirm at once.
const WINDOW: usize = 256;

/// Requests per second of the minimal at-least-once loop: a producer publishing `bodies` with
/// confirms to a durable quorum queue, and a consumer with `prefetch` that acks each (first
/// publish to last ack).
pub async fn raw_broker(url: &str, bodies: Arc<Vec<Bytes>>, prefetch: u16) -> anyhow::Result<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("ember-loadtest.raw.{}", std::process::id());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, arguments)
        .await?;
    let consuming = connection.create_channel().await?;
    consuming
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consuming
        .basic_consume(
            queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let producer = connection.create_channel().await?;
    producer
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let count = bodies.len();
    let started = Instant::now();
    let producing = tokio::spawn({
        let queue = queue.clone();
        async move {
            let mut pending = VecDeque::new();
            for body in bodies.iter() {
                let confirm = producer
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                pending.push_back(confirm);
                if pending.len() == WINDOW {
                    pending.pop_front().expect("full").await?;
                }
            }
            for confirm in pending {
                confirm.await?;
            }
            Ok::<_, lapin::Error>(())
        }
    });
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
        acks.spawn(async move { delivery.ack(BasicAckOptions::default()).await });
    }
    while let Some(acked) = acks.join_next().await {
        acked??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    producing.await??;
    consuming.close(200, "done".into()).await?;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}
