//! `ember gateway`: the Open Inference Protocol REST API, bridged onto the queues.

use super::args::{BrokerArgs, RepoArgs};
use super::shutdown_signal;
use crate::client::Client;
use crate::gateway::{Gateway, GatewayConfig};
use crate::protocol::DEFAULT_MAX_REQUEST_BYTES;
use crate::worker::{DEFAULT_MAX_REQUEST_ROWS, RequestLimits};
use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
use clap::builder::TypedValueParser;
use std::time::Duration;

/// `ember gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, env = "EMBER_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Longest a request waits for its answer (then 504).
    #[arg(long, env = "EMBER_GATEWAY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Larger request bodies are refused (413).
    #[arg(long, env = "EMBER_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Requests with more rows are refused (413), as a worker refuses them.
    #[arg(long, env = "EMBER_MAX_REQUEST_ROWS", default_value_t = DEFAULT_MAX_REQUEST_ROWS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_request_rows: usize,
    /// How long model metadata read from the repository is reused.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,
    /// Model repository (manifests: metadata and validation).
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<i32> {
    let config = GatewayConfig {
        timeout: args.timeout,
        limits: RequestLimits {
            max_request_bytes: args.max_request_bytes,
            max_request_rows: args.max_request_rows,
        },
        metadata_ttl: args.metadata_ttl,
    };
    let client = Client::from_arc(args.broker.connect().await?);
    let gateway = Gateway::new(client, args.repo.open()?, config);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "ember gateway listening on http://{}",
        listener.local_addr()?
    );
    // Answers are small and awaited: send them at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, gateway.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(0)
}
