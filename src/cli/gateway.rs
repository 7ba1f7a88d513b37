//! `ember gateway`: the Open Inference Protocol REST API, bridged onto the queues.

use super::args::{BrokerArgs, LimitsArgs, RepoArgs};
use super::shutdown_signal;
use crate::client::Client;
use crate::client::chain::Chain;
use crate::gateway::{Gateway, GatewayConfig};
use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
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
    /// What one request may be, checked here as a worker checks it.
    #[command(flatten)]
    pub limits: LimitsArgs,
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
        limits: args.limits.into(),
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
            tracing::debug!(error = %Chain(&e), "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, gateway.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(0)
}
