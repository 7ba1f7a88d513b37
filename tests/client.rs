//! `ember::client` against a real RabbitMQ and a worker in this process: realtime calls
//! (concurrent, timed out, retried across a dropped connection, idempotent) and batch jobs
//! (every answer once, continued after the submitter stopped).

mod common;

use common::proxy::FaultProxy;
use common::{LocalWorker, broker, held_out, image_request, unique_model};
use ember::client::{BatchOptions, Client, ClientError, InferOptions};
use ember::protocol::{DataType, ErrorCode, Lane, Reply, Tensor, TensorData, decode_reply};
use ember::train::digits::PIXELS;
use ember::transport::amqp::AmqpConfig;
use ember::transport::{ClientTransport, Message, Properties, Transport, queues};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn digit(pixels: &[f32]) -> Tensor {
    Tensor {
        name: "input".into(),
        shape: vec![1, PIXELS],
        datatype: DataType::Fp32,
        data: TensorData::F32(pixels.to_vec()),
    }
}

#[tokio::test]
async fn concurrent_calls_share_one_inbox_and_each_gets_its_own_answer() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "client-rpc").await;
    let client = Client::from_arc(transport.clone());
    let data = held_out();
    let calls = (0..64).map(|i| {
        let (client, model, data) = (&client, &worker.model, &data);
        async move {
            // Every other call with binary tensor data both ways.
            let options = InferOptions {
                id: Some(format!("img-{i}")),
                binary: i % 2 == 1,
                ..InferOptions::default()
            };
            let response = client
                .infer_with(model, &[digit(data.image(i))], &options)
                .await
                .unwrap();
            assert_eq!(response.id, format!("img-{i}"), "answer routed to its call");
            assert_eq!(response.binary, [options.binary; 2]);
            response.outputs[1].data == TensorData::I64(vec![data.labels[i].into()])
        }
    });
    let correct = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|&ok| ok)
        .count();
    assert!(correct >= 61, "{correct} of 64 digits right");
    // Binary or JSON, the same numbers.
    let asked = |binary| {
        let options = InferOptions {
            binary,
            ..InferOptions::default()
        };
        let (client, model) = (&client, &worker.model);
        let inputs = [digit(data.image(7))];
        async move { client.infer_with(model, &inputs, &options).await.unwrap() }
    };
    assert_eq!(asked(true).await.outputs, asked(false).await.outputs);
    let error = client
        .infer(
            &worker.model,
            &[Tensor {
                shape: vec![1, 3],
                data: TensorData::F32(vec![0.0; 3]),
                ..digit(&[])
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::Inference(e) if e.code == ErrorCode::InvalidArgument),
        "{error}"
    );
    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test]
async fn a_model_without_queue_or_worker_is_a_clear_error() {
    let transport = broker(|c| c).await;
    let client = Client::new(transport.clone());
    let model = unique_model("client-nobody");
    let error = client
        .infer(&model, &[digit(&[0.0; 64])])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::NoQueue { .. }) && error.to_string().contains(&model),
        "{error}"
    );
    transport.declare(&model).await.unwrap();
    let options = InferOptions {
        timeout: Duration::from_millis(300),
        ..InferOptions::default()
    };
    let started = Instant::now();
    let error = client
        .infer_with(&model, &[digit(&[0.0; 64])], &options)
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    transport.delete(&model).await.unwrap();
}

#[tokio::test]
async fn a_call_outlives_a_dropped_broker_connection() {
    let direct = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(direct.clone(), "client-retry").await;
    let proxy = FaultProxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let client = Client::new(
        ember::transport::amqp::AmqpTransport::connect(AmqpConfig::new(url))
            .await
            .unwrap(),
    );
    let data = held_out();
    client
        .infer(&worker.model, &[digit(data.image(0))])
        .await
        .unwrap();
    proxy.down();
    let restore = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.up();
        proxy
    });
    let response = client
        .infer(&worker.model, &[digit(data.image(1))])
        .await
        .expect("answered once the broker is reachable again");
    assert_eq!(
        response.outputs[1].data,
        TensorData::I64(vec![data.labels[1].into()])
    );
    let proxy = restore.await.unwrap();
    assert!(proxy.connections() >= 2, "the client reconnected");
    let model = worker.stop().await;
    direct.delete(&model).await.unwrap();
}

/// Sends `body` with `properties` through a fresh inbox and returns the reply.
async fn raw_call(
    transport: &dyn ClientTransport,
    queue: &str,
    body: Vec<u8>,
    properties: Properties,
) -> Reply {
    let mut inbox = transport.inbox().await.unwrap();
    let message = Message {
        body: body.into(),
        properties,
    };
    inbox.sender.send(queue, message).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), inbox.replies.next())
        .await
        .unwrap()
        .unwrap();
    decode_reply(&reply.body).unwrap()
}

#[tokio::test]
async fn a_request_sent_again_is_answered_from_memory_not_computed_again() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "client-again").await;
    let queue = queues::requests(&worker.model, Lane::Realtime);
    let data = held_out();
    let body = image_request("again", data.image(3), 1);
    let with = |deadline_ms| Properties {
        message_id: Some("again-1".into()),
        deadline_ms,
        ..Properties::default()
    };
    let first = raw_call(transport.as_ref(), &queue, body.clone(), with(None)).await;
    assert!(matches!(first, Reply::Ok(_)), "{first:?}");
    // The same request again, now past its deadline: computing it would answer
    // DEADLINE_EXCEEDED; the worker sends the answer it gave, to the new inbox.
    let again = raw_call(transport.as_ref(), &queue, body, with(Some(1_000))).await;
    assert_eq!(again, first);
    // Another body under the same id is another request.
    let other = image_request("again", data.image(4), 1);
    let other = raw_call(transport.as_ref(), &queue, other, with(Some(1_000))).await;
    assert!(
        matches!(&other, Reply::Err(e) if e.code == ErrorCode::DeadlineExceeded),
        "{other:?}"
    );
    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test]
async fn a_batch_request_sent_again_is_answered_again_from_memory() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "client-batch-again").await;
    let data = held_out();
    let body = image_request("twice", data.image(5), 1);
    let send = |deadline_ms| {
        let message = Message {
            body: body.clone().into(),
            properties: Properties {
                message_id: Some("twice-1".into()),
                lane: Some(Lane::Batch),
                deadline_ms,
                ..Properties::default()
            },
        };
        let transport = transport.clone();
        let queue = queues::requests(&worker.model, Lane::Batch);
        async move { transport.publish(&queue, message).await.unwrap() }
    };
    let mut results = transport
        .subscribe(&[queues::results(&worker.model)], 8)
        .await
        .unwrap();
    let mut next_answer = async || {
        let delivery = tokio::time::timeout(Duration::from_secs(30), results.next())
            .await
            .expect("an answer in the result queue")
            .unwrap();
        let answer = delivery.message.clone();
        delivery.settle.ack().await.unwrap();
        answer
    };
    send(None).await;
    let first = next_answer().await;
    // Sent again (as `ember send` of the same file does), now past its deadline: computing it
    // would answer DEADLINE_EXCEEDED; the worker publishes the answer it gave again.
    send(Some(1_000)).await;
    let again = next_answer().await;
    assert!(matches!(decode_reply(&first.body).unwrap(), Reply::Ok(_)));
    assert_eq!(again.body, first.body);
    assert_eq!(again.properties.message_id.as_deref(), Some("twice-1"));
    results.stop().await;
    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test]
async fn a_batch_job_answers_every_request_once_and_continues_after_its_submitter_stops() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "client-batch").await;
    let client = Client::from_arc(transport.clone());
    let data = held_out();
    let body = |i: usize| bytes::Bytes::from(image_request(&format!("b-{i}"), data.image(i), 1));
    let job_id = format!("job{}", std::process::id());
    let options = BatchOptions {
        job: Some(job_id.clone()),
        window: 128,
        ..BatchOptions::default()
    };

    // First run: 100 requests sent, a few answers stored, then the submitter goes away.
    let first: Vec<_> = (0..100).map(body).collect();
    let mut job = client
        .submit_batch(&worker.model, futures::stream::iter(first), options.clone())
        .await
        .unwrap();
    let mut stored = BTreeMap::new();
    while stored.len() < 10 {
        let result = job.next_result().await.unwrap();
        stored.insert(result.index, result.message().body.clone());
        result.ack().await.unwrap();
    }
    assert_eq!(job.sent().await.unwrap(), 100);
    drop(job);

    // Second run: the same job, the rest of the requests; every answer arrives, those
    // already stored come again only if their ack was lost.
    let outstanding: Vec<u64> = (0..100).filter(|i| !stored.contains_key(i)).collect();
    let rest: Vec<_> = (100..150).map(body).collect();
    // A window smaller than what is outstanding: nothing more is sent until answers free it.
    let options = BatchOptions {
        first_index: 100,
        outstanding: 0..100,
        window: 16,
        ..options
    };
    let mut job = client
        .submit_batch(&worker.model, futures::stream::iter(rest), options)
        .await
        .unwrap();
    while stored.len() < 150 {
        let result = tokio::time::timeout(Duration::from_secs(30), job.next_result())
            .await
            .expect("answers keep coming")
            .unwrap();
        let answer = decode_reply(&result.message().body).unwrap();
        let Reply::Ok(response) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(response.id, format!("b-{}", result.index));
        stored.insert(result.index, result.message().body.clone());
        result.ack().await.unwrap();
    }
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (0..150).collect::<Vec<_>>()
    );
    assert!(outstanding.len() >= 90);
    let results = queues::job_results(&worker.model, &job_id);
    job.finish().await.unwrap();
    assert!(
        transport.depth(&results).await.is_err(),
        "the job's queue is deleted when it finishes"
    );
    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}
