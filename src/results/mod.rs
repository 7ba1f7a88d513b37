//! Publishing results: the response (or error) goes to `reply_to`, else to the model's result
//! queue, and only once the transport has confirmed it is the request's delivery acked.

use crate::protocol::{
    ErrorCode, ErrorResponse, InferError, InferResponse, Tensor, TensorData, encode_reply,
};
use crate::store::Manifest;
use crate::transport::{Delivery, Message, Properties, Transport, queues};

/// Redeliveries after which a request that keeps failing internally is dead-lettered.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 3;

/// The outcome of one request.
pub type Outcome = Result<Vec<TensorData>, InferError>;

/// Builds the response for `outputs` (manifest order, `rows` rows each).
pub fn response(
    manifest: &Manifest,
    id: String,
    outputs: Vec<TensorData>,
    rows: usize,
) -> InferResponse {
    let outputs = manifest
        .outputs
        .iter()
        .zip(outputs)
        .map(|(spec, data)| Tensor {
            name: spec.name.clone(),
            shape: spec
                .shape
                .iter()
                .map(|&d| if d < 0 { rows } else { d as usize })
                .collect(),
            datatype: spec.datatype,
            data,
        })
        .collect();
    InferResponse {
        id,
        model_name: manifest.name.to_string(),
        model_version: manifest.version.to_string(),
        outputs,
    }
}

/// Answers `delivery` for `model` and settles it: publish the reply, then ack. An internal
/// failure is requeued (no reply) until `max_redeliveries`, then answered and dead-lettered.
/// If publishing fails the delivery is requeued, so nothing is lost.
pub async fn finish(
    transport: &dyn Transport,
    model: &str,
    delivery: Delivery,
    reply: Result<InferResponse, ErrorResponse>,
    max_redeliveries: u32,
) {
    let Delivery {
        message,
        redeliveries,
        settle,
        ..
    } = delivery;
    let request = message.properties;
    let error_code = reply.as_ref().err().map(|e| e.code);
    if error_code == Some(ErrorCode::Internal) && redeliveries < max_redeliveries {
        metrics::counter!("ember_requests_requeued_total").increment(1);
        if let Err(e) = settle.requeue().await {
            tracing::warn!(error = %e, "requeue failed; the broker will redeliver");
        }
        return;
    }
    let destination = request
        .reply_to
        .clone()
        .unwrap_or_else(|| queues::results(model));
    let (version, reason) = match &reply {
        Ok(response) => (Some(response.model_version.clone()), None),
        Err(error) => (None, Some(error.error.clone())),
    };
    let outgoing = Message {
        body: encode_reply(&reply).into(),
        properties: Properties {
            correlation_id: request
                .correlation_id
                .or_else(|| request.message_id.clone()),
            message_id: request.message_id,
            model: Some(model.to_owned()),
            version,
            lane: request.lane,
            error_code,
            ..Properties::default()
        },
    };
    let counter = match error_code {
        None => "ok",
        Some(code) => code.as_str(),
    };
    metrics::counter!("ember_requests_total", "code" => counter).increment(1);
    let settled = match transport.publish(&destination, outgoing).await {
        Ok(()) if error_code == Some(ErrorCode::Internal) => {
            let reason = reason.unwrap_or_default();
            settle.dead_letter(ErrorCode::Internal, &reason).await
        }
        Ok(()) => settle.ack().await,
        Err(e) => {
            tracing::warn!(error = %e, %destination, "publishing the reply failed; requeueing the request");
            settle.requeue().await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "settling the delivery failed; the broker will redeliver");
    }
}
