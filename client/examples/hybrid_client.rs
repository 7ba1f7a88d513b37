//! A hybrid client: one realtime call and one small batch job against a worker serving
//! `digits` over RabbitMQ.
//!
//! ```sh
//! ember serve --transport amqp --model digits &      # a worker
//! cargo run -p ember-client --example hybrid_client
//! ```

use ember_client::protocol::{DataType, Tensor, TensorData, encode_request};
use ember_client::transport::amqp::{AmqpConfig, AmqpTransport};
use ember_client::{BatchOptions, Client, ClientError, InferOptions};
use std::time::Duration;

/// A handwritten zero, 8×8 pixels of intensity 0–16 (the digits model's input).
const ZERO: [f32; 64] = [
    0., 0., 5., 13., 9., 1., 0., 0., 0., 0., 13., 15., 10., 15., 5., 0., 0., 3., 15., 2., 0., 11.,
    8., 0., 0., 4., 12., 0., 0., 8., 8., 0., 0., 5., 8., 0., 0., 9., 8., 0., 0., 4., 11., 0., 1.,
    12., 7., 0., 0., 2., 14., 5., 10., 12., 0., 0., 0., 0., 6., 13., 10., 0., 0., 0.,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EMBER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let client = Client::new(AmqpTransport::connect(AmqpConfig::new(url)).await?);
    let digit = Tensor {
        name: "input".into(),
        shape: vec![1, 64],
        datatype: DataType::Fp32,
        data: TensorData::F32(ZERO.to_vec()),
    };

    // Realtime: answered within the deadline, or a clear error.
    let options = InferOptions {
        timeout: Duration::from_secs(10),
        ..InferOptions::default()
    };
    match client
        .infer_with("digits", std::slice::from_ref(&digit), &options)
        .await
    {
        Ok(answer) => println!("realtime: label {:?}", answer.outputs[1].data),
        Err(ClientError::NoQueue { .. } | ClientError::Timeout { .. }) => {
            eprintln!(
                "no worker answers digits: start `ember serve --transport amqp --model digits`"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }

    // Batch: ten requests, answers in any order, each acked once stored.
    let bodies: Vec<_> = (0..10)
        .map(|i| encode_request(&format!("zero-{i}"), std::slice::from_ref(&digit)).into())
        .collect();
    let mut job = client
        .submit_batch(
            "digits",
            futures::stream::iter(bodies),
            BatchOptions::default(),
        )
        .await?;
    let mut answered = 0;
    while answered < 10 {
        let Some(result) = job.next_result().await else {
            break;
        };
        println!(
            "batch {}: {}",
            result.index,
            String::from_utf8_lossy(&result.message().body)
        );
        result.ack().await?;
        answered += 1;
    }
    job.finish().await?;
    Ok(())
}
