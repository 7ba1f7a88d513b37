//! `ember infer`: one request, answered through a broker or in process.

use super::args::{CLIENT_RECEIVE_CONCURRENCY, PipelineArgs, TransportArgs};
use crate::client::{Client, ClientError, InferOptions};
use crate::protocol::{
    ErrorCode, ErrorResponse, InferError, Reply, decode_reply, reply_as_json, request_id,
};
use crate::store::ModelName;
use crate::transport::Message;
use crate::transport::memory::MemoryTransport;
use crate::worker::{ServeError, Worker};
use anyhow::Context;
use clap::Args;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `ember infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model to ask.
    #[arg(long)]
    pub model: String,
    /// Version or alias (default: production).
    #[arg(long)]
    pub version: Option<String>,
    /// Request file (OIP V2 JSON), or - for stdin.
    #[arg(long)]
    pub input: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where the request goes: memory runs a worker in this process; amqp and servicebus ask
    /// the workers serving the model through the broker.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Pipeline limits (of the in-process worker).
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub async fn run(args: InferArgs) -> anyhow::Result<i32> {
    let limit = args.pipeline.limits.max_request_bytes;
    let mut body = Vec::new();
    let reader: Box<dyn Read> = match args.input.as_str() {
        "-" => Box::new(std::io::stdin()),
        path => Box::new(std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?),
    };
    // One byte over the limit is enough for the worker to refuse it.
    reader.take(limit as u64 + 1).read_to_end(&mut body)?;

    // An invalid model name has no queue a worker consumes; answer it here as a worker would.
    let model = match ModelName::parse(&args.model) {
        Ok(model) => model,
        Err(e) => {
            let error = ErrorResponse::new("cli", &InferError::invalid(e.to_string()));
            println!("{}", serde_json::to_string(&error)?);
            return Ok(2);
        }
    };
    let options = InferOptions {
        version: args.version,
        timeout: args.timeout,
        ..InferOptions::default()
    };
    let reply = match args.transport.transport.broker() {
        Some(broker) => {
            let transport = args
                .transport
                .brokers
                .connect(broker, CLIENT_RECEIVE_CONCURRENCY)
                .await?;
            let client = Client::from_arc(transport);
            let id = request_id(&body);
            match client.call(model.as_str(), body.into(), &options).await {
                Ok(reply) => reply,
                // Answered here as the gateway answers them: no worker, no answer in time.
                Err(e @ (ClientError::NoQueue { .. } | ClientError::Timeout { .. })) => {
                    let code = match e {
                        ClientError::NoQueue { .. } => ErrorCode::NotFound,
                        _ => ErrorCode::DeadlineExceeded,
                    };
                    let error = InferError::new(code, e.to_string());
                    let error = ErrorResponse::new(id.unwrap_or_else(|| "cli".into()), &error);
                    println!("{}", serde_json::to_string(&error)?);
                    return Ok(2);
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => infer_in_process(&args.pipeline, model, body.into(), &options).await?,
    };
    // A binary answer (the request asked for it) is printed as JSON.
    let header_length = reply.properties.header_length.map(|n| n as usize);
    let json = reply_as_json(&reply.body, header_length).map_err(anyhow::Error::msg)?;
    println!("{}", String::from_utf8_lossy(&json));
    Ok(match decode_reply(&json) {
        Ok(Reply::Ok(_)) => 0,
        Ok(Reply::Err(e)) if e.code == ErrorCode::Internal => 1,
        Ok(Reply::Err(_)) => 2,
        Err(_) => 1,
    })
}

/// Answers `body` with a worker started in this process, over the memory transport; a model
/// it cannot serve is answered as a worker would answer a request for it.
async fn infer_in_process(
    pipeline: &PipelineArgs,
    model: ModelName,
    body: bytes::Bytes,
    options: &InferOptions,
) -> anyhow::Result<Message> {
    let transport = Arc::new(MemoryTransport::new());
    let worker = Worker::new(transport.clone(), pipeline.registry()?, pipeline.worker(0));
    let shutdown = CancellationToken::new();
    let models = [model.clone()];
    let mut serving = {
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        tokio::spawn(async move { worker.run(&models, shutdown).await })
    };
    let client = Client::from_arc(transport);
    let id = request_id(&body);
    let reply = tokio::select! {
        reply = client.call(model.as_str(), body, options) => reply?,
        served = &mut serving => {
            let error = match served? {
                Err(ServeError::Model { error, .. }) => error,
                Err(e) => return Err(e.into()),
                Ok(()) => InferError::internal("the worker stopped before answering"),
            };
            let error = ErrorResponse::new(id.unwrap_or_else(|| "cli".into()), &error);
            let body = serde_json::to_vec(&error)?;
            return Ok(Message { body: body.into(), properties: Default::default() });
        }
    };
    shutdown.cancel();
    serving.await??;
    Ok(reply)
}
