//! The ceilings every Ember figure is divided by, measured in the same run:
//! - `raw-broker`: a minimal lapin publish → consume → ack loop, same bodies and prefetch;
//! - `raw-rpc`: the same with a reply per request, published (confirmed) to a second queue
//!   before the request is acked: the broker work of one answered request, nothing else;
//! - `in-process`: the model run directly on batches (no transport, decoding or batching).

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
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
    declare_quorum(&channel, &queue).await?;
    let (consuming, mut consumer) = consume(&connection, &queue, prefetch).await?;
    let producer = connection.create_channel().await?;
    producer
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let count = bodies.len();
    let started = Instant::now();
    let producing = tokio::spawn(publish_confirmed(producer, queue.clone(), bodies));
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

/// Messages per second of publishing `bodies` persistent with confirms (`WINDOW` awaiting
/// theirs at once) to a fresh durable quorum queue nobody consumes; the queue is deleted after.
pub async fn raw_publish(url: &str, bodies: Arc<Vec<Bytes>>) -> anyhow::Result<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("ember-loadtest.publish.{}", std::process::id());
    declare_quorum(&channel, &queue).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let count = bodies.len();
    let started = Instant::now();
    publish_confirmed(channel.clone(), queue.clone(), bodies).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}

/// A channel with `prefetch` consuming `queue` (manual acks), and its consumer.
async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> lapin::Result<(Channel, lapin::Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Declares `queue` durable and of type quorum, as Ember declares its queues.
async fn declare_quorum(channel: &Channel, queue: &str) -> lapin::Result<()> {
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
        .queue_declare(queue.into(), durable, arguments)
        .await
        .map(drop)
}

/// Publishes `bodies` persistent to `queue` on `channel` (in confirm mode), `WINDOW` awaiting
/// their confirm at once.
async fn publish_confirmed(
    channel: Channel,
    queue: String,
    bodies: Arc<Vec<Bytes>>,
) -> lapin::Result<()> {
    let mut pending = VecDeque::new();
    for body in bodies.iter() {
        let confirm = channel
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
    Ok(())
}

/// Requests per second of the minimal at-least-once request → reply exchange over two durable
/// quorum queues: a client publishing `bodies` with confirms, a server (prefetch `prefetch`)
/// that publishes each body back as the reply, awaits its confirm and acks the request, and
/// the client consuming and acking the replies (first publish to last reply).
pub async fn raw_rpc(url: &str, bodies: Arc<Vec<Bytes>>, prefetch: u16) -> anyhow::Result<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    let run = std::process::id();
    let (requests, replies) = (
        format!("ember-loadtest.rpc-requests.{run}"),
        format!("ember-loadtest.rpc-replies.{run}"),
    );
    for queue in [&requests, &replies] {
        declare_quorum(&setup, queue).await?;
    }
    let (request_channel, mut incoming) = consume(&connection, &requests, prefetch).await?;
    let (reply_channel, mut answers) = consume(&connection, &replies, 1000).await?;
    let server_channel = connection.create_channel().await?;
    server_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let client = connection.create_channel().await?;
    client
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let count = bodies.len();
    let started = Instant::now();
    let server = tokio::spawn({
        let replies = replies.clone();
        async move {
            let mut settling = tokio::task::JoinSet::new();
            for _ in 0..count {
                let delivery = incoming
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("request consumer closed"))??;
                let confirm = server_channel
                    .basic_publish(
                        "".into(),
                        replies.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                settling.spawn(async move {
                    confirm.await?;
                    delivery.ack(BasicAckOptions::default()).await
                });
            }
            while let Some(settled) = settling.join_next().await {
                settled??;
            }
            // Handed back so that it is dropped after its channel is closed (a consumer
            // dropped first sends basic.cancel, whose late cancel-ok lapin takes for a
            // protocol error).
            Ok::<_, anyhow::Error>(incoming)
        }
    });
    let producing = tokio::spawn(publish_confirmed(client, requests.clone(), bodies));
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let reply = answers
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("reply consumer closed"))??;
        acks.spawn(async move { reply.ack(BasicAckOptions::default()).await });
    }
    while let Some(acked) = acks.join_next().await {
        acked??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    producing.await??;
    let incoming = server.await??;
    for channel in [request_channel, reply_channel] {
        channel.close(200, "done".into()).await?;
    }
    drop((incoming, answers));
    for queue in [&requests, &replies] {
        setup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}
