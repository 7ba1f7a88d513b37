//! Publishing requests without waiting for answers (`ember send`): each body goes to the model's
//! queue with a stable message id (the request's own `id`, else one per run and position), a
//! window of publishes awaiting their broker confirms at once.

use crate::protocol::{Lane, request_id, to_binary};
use crate::transport::{Message, Properties, Transport, TransportError, queues};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Publishes awaiting their confirm at once.
const WINDOW: usize = 256;

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The model asked.
    pub model: String,
    /// Version or alias (default: the worker's, `production`).
    pub version: Option<String>,
    /// The queue lane.
    pub lane: Lane,
    /// Answer to this queue instead of the model's result queue.
    pub reply_to: Option<String>,
    /// Requests not computed within this long (from now) are answered `DEADLINE_EXCEEDED`.
    pub deadline: Option<Duration>,
    /// Send the inputs as binary tensor data ([`to_binary`]).
    pub binary: bool,
}

/// What became of the requests.
#[derive(Debug, Default)]
pub struct SendReport {
    /// The queue they went to.
    pub queue: String,
    /// Confirmed by the broker.
    pub sent: usize,
    /// Not sent: the request's position (from 1) and why.
    pub failed: Vec<(usize, TransportError)>,
}

/// The requests in `input`: one JSON document (pretty-printed or not), else JSON Lines (blank
/// lines skipped).
pub fn split_requests(input: &Bytes) -> Vec<Bytes> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(input).is_ok() {
        return vec![input.clone()];
    }
    let mut requests = Vec::new();
    let mut start = 0;
    for end in (0..=input.len()).filter(|&i| i == input.len() || input[i] == b'\n') {
        let line = input.slice(start..end);
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            requests.push(line);
        }
        start = end + 1;
    }
    requests
}

/// Publishes `bodies` to `options.model`'s queue, returning once the broker confirmed or
/// refused each.
pub async fn send(
    transport: Arc<dyn Transport>,
    bodies: Vec<Bytes>,
    options: &SendOptions,
) -> SendReport {
    let queue = queues::requests(&options.model, options.lane);
    let run = format!(
        "send-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut report = SendReport {
        queue: queue.clone(),
        ..SendReport::default()
    };
    let mut pending = FuturesUnordered::new();
    for (position, body) in (1..).zip(bodies) {
        let mut properties = Properties {
            message_id: Some(
                request_id(&body).unwrap_or_else(|| format!("{run}-{}", position - 1)),
            ),
            reply_to: options.reply_to.clone(),
            model: Some(options.model.clone()),
            version: options.version.clone(),
            lane: Some(options.lane),
            ..Properties::default()
        }
        .sent_now();
        let framed = options.binary.then(|| to_binary(&body)).flatten();
        let body = match framed {
            Some((framed, header_length)) => {
                properties.header_length = Some(header_length as u64);
                Bytes::from(framed)
            }
            None => body,
        };
        if let Some(deadline) = options.deadline {
            properties = properties.with_deadline_in(deadline);
        }
        if pending.len() >= WINDOW
            && let Some(outcome) = pending.next().await
        {
            tally(outcome, &mut report);
        }
        let (transport, queue) = (transport.clone(), queue.clone());
        pending.push(async move {
            let message = Message { body, properties };
            transport
                .publish(&queue, message)
                .await
                .map_err(|e| (position, e))
        });
    }
    while let Some(outcome) = pending.next().await {
        tally(outcome, &mut report);
    }
    report
}

fn tally(outcome: Result<(), (usize, TransportError)>, report: &mut SendReport) {
    match outcome {
        Ok(()) => report.sent += 1,
        Err(failure) => report.failed.push(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_or_json_lines() {
        let pretty = Bytes::from("{\n  \"id\": \"1\",\n  \"inputs\": []\n}\n");
        assert_eq!(split_requests(&pretty), std::slice::from_ref(&pretty));
        let lines = Bytes::from("{\"id\":\"1\"}\n\n  \n{\"id\":\"2\"}");
        assert_eq!(
            split_requests(&lines),
            [Bytes::from("{\"id\":\"1\"}"), Bytes::from("{\"id\":\"2\"}")]
        );
        assert_eq!(
            request_id(b"{\"id\":\"7\",\"inputs\":[]}").as_deref(),
            Some("7")
        );
        assert_eq!(request_id(b"not json"), None);
    }
}
