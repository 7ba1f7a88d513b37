//! Service Bus transport throughput against the local REST **test double**
//! (crate `servicebus-double`), side by side in one run:
//!
//! - receive + complete: requests taken from a queue and settled per second with 1, 8 and 32
//!   receive calls in flight, over pooled connections (Ember's client) and over the crate's
//!   default client (a new connection for every call);
//! - send: requests published per second, 32 sends in flight.
//!
//! Loopback, so this is the client's ceiling and the cost of each call's overhead; against Azure
//! every call is also a network round trip (docs/servicebus.md).
//!
//! `cargo bench --bench servicebus [-- --rounds N --messages M]`

#[path = "../tests/common/servicebus.rs"]
mod servicebus;

use ember::transport::servicebus::{ServiceBusTransport, pooled_http_client};
use ember::transport::{ClientTransport, Message, Properties, Transport};
use servicebus::ServiceBusDouble;
use std::sync::Arc;
use std::time::Instant;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn request(i: usize) -> Message {
    Message {
        // A digits request's size: 64 pixels as JSON.
        body: format!(
            r#"{{"id":"{i}","inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
            vec!["0.5"; 64].join(",")
        )
        .into(),
        properties: Properties {
            message_id: Some(i.to_string()),
            ..Properties::default()
        },
    }
}

/// Seconds to publish `n` requests with 32 in flight.
async fn send(t: &Arc<ServiceBusTransport>, queue: &str, n: usize) -> f64 {
    let started = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        if pending.len() >= 32 {
            pending.join_next().await.unwrap().unwrap();
        }
        let (t, queue) = (t.clone(), queue.to_owned());
        pending.spawn(async move { t.publish(&queue, request(i)).await.unwrap() });
    }
    while let Some(done) = pending.join_next().await {
        done.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// Seconds to receive and complete `n` requests (completions concurrent, as the worker's).
async fn receive(t: &ServiceBusTransport, queue: &str, n: usize) -> f64 {
    let started = Instant::now();
    let mut sub = t.subscribe(&[queue.to_owned()], 256).await.unwrap();
    let mut completing = tokio::task::JoinSet::new();
    for _ in 0..n {
        let delivery = sub.next().await.unwrap();
        completing.spawn(async move { delivery.settle.ack().await.unwrap() });
    }
    while let Some(done) = completing.join_next().await {
        done.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    sub.stop().await;
    seconds
}

#[tokio::main]
async fn main() {
    let rounds = flag("--rounds", 3);
    let messages = flag("--messages", 2000);
    let double = ServiceBusDouble::shared();
    let clients = [
        ("pooled", pooled_http_client()),
        ("connection per call", azure_core::new_http_client()),
    ];
    println!(
        "Service Bus REST transport against the local double: {messages} messages, median of {rounds} rounds"
    );
    println!(
        "{:<22} {:>9} {:>12} {:>9}",
        "client", "receivers", "messages/s", "÷ 1 pooled"
    );
    let mut baseline = None;
    let mut send_rates = Vec::new();
    for (name, http) in &clients {
        for receivers in [1, 8, 32] {
            let mut config = servicebus::config(double);
            config.receivers = receivers;
            let t = Arc::new(ServiceBusTransport::with_http_client(http.clone(), config));
            let queue = format!(
                "bench.{}.{receivers}.{}",
                name.replace(' ', "-"),
                std::process::id()
            );
            t.declare_queue(&queue, None).await.unwrap();
            let mut rates = Vec::new();
            for _ in 0..rounds {
                let sending = send(&t, &queue, messages).await;
                if receivers == 1 {
                    send_rates.push((*name, messages as f64 / sending));
                }
                rates.push(messages as f64 / receive(&t, &queue, messages).await);
            }
            let rate = median(rates);
            let base = *baseline.get_or_insert(rate);
            println!(
                "{name:<22} {receivers:>9} {rate:>12.0} {:>9.2}",
                rate / base
            );
            t.delete_queue(&queue).await.unwrap();
        }
    }
    for (name, _) in &clients {
        let rates = send_rates
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, r)| *r)
            .collect();
        println!(
            "send, 32 in flight, {name}: {:.0} messages/s",
            median(rates)
        );
    }
}
