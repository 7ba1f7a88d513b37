//! `ember-loadtest run` and `soak`: the traffic a user describes, offered to workers this tool
//! starts (`ember serve` for the models) or to workers already serving (`--external`).

use crate::load::{self, LoadReport, LoadSpec};
use crate::worker::Worker;
use ember::protocol::Lane;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use ember::transport::{ClientTransport, Transport, TransportError, queues};
use std::path::PathBuf;

/// Fails at once, saying so, when a queue of the load has no worker to take it (the requests
/// would only wait there).
async fn consumed(url: &str, spec: &LoadSpec) -> anyhow::Result<()> {
    let broker = AmqpTransport::connect(AmqpConfig::new(url)).await?;
    let mut checked = Ok(());
    for target in &spec.targets {
        let queue = queues::requests(&target.model, Lane::Realtime);
        let consumers = match broker.consumers(&queue).await {
            Err(TransportError::Unroutable(_)) => 0,
            counted => counted?.unwrap_or(1),
        };
        if consumers == 0 {
            checked = Err(anyhow::anyhow!(
                "--external: nothing consumes {queue}; start a worker (`ember serve --transport \
                 amqp --model {}`) or run without --external",
                target.model
            ));
            break;
        }
    }
    broker.close().await;
    checked
}

/// Where the workers under load come from.
#[derive(Debug, Clone)]
pub enum Workers {
    /// Start one `ember serve` for every model of the load, stopped (drained) afterwards.
    Spawn {
        /// The `ember` binary.
        ember: PathBuf,
        /// Its `--model-repo`.
        model_repo: PathBuf,
        /// Its `--max-batch-size`.
        max_batch: usize,
        /// Further `ember serve` flags.
        serve_args: Vec<String>,
    },
    /// Already serving; memory is sampled when the pid is given.
    External {
        /// The worker process to sample.
        pid: Option<u32>,
    },
}

/// Offers `spec`'s load through the broker at `url` to `workers`.
pub async fn run(url: &str, workers: &Workers, mut spec: LoadSpec) -> anyhow::Result<LoadReport> {
    match workers {
        Workers::External { pid } => {
            consumed(url, &spec).await?;
            spec.worker_pid = *pid;
            load::run(url, &spec).await
        }
        Workers::Spawn {
            ember,
            model_repo,
            max_batch,
            serve_args,
        } => {
            let models: Vec<&str> = spec.targets.iter().map(|t| t.model.as_str()).collect();
            let mut args = vec![
                "--model".to_owned(),
                models.join(","),
                "--model-repo".to_owned(),
                model_repo.display().to_string(),
                "--max-batch-size".to_owned(),
                max_batch.to_string(),
            ];
            args.extend(serve_args.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let worker = Worker::start(ember, url, &args).await?;
            spec.worker_pid = worker.pid();
            let report = load::run(url, &spec).await;
            let drained = worker.stop().await?;
            if !drained {
                eprintln!("ember-loadtest: the worker did not exit cleanly after SIGTERM");
            }
            report
        }
    }
}
