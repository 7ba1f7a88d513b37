//! `ember-loadtest`: drives Ember through RabbitMQ the way production traffic does and reports
//! latency (HDR histograms from intended send times), throughput, errors and lost requests,
//! with the broker and compute ceilings measured in the same run.

mod baseline;
mod load;
mod ratios;
mod sweep;
mod worker;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use load::{Arrival, LoadSpec, Target};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Load generator for Ember.
#[derive(Debug, Parser)]
#[command(name = "ember-loadtest", version, about)]
struct Cli {
    /// The broker.
    #[arg(
        long,
        env = "EMBER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        global = true
    )]
    amqp_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Broker efficiency, end-to-end efficiency, batching gain and tail ratio, in one run
    /// (starts its own `ember serve` workers).
    Ratios {
        /// Requests per throughput measurement.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests in flight in the max-throughput runs.
        #[arg(long, default_value_t = 512)]
        in_flight: usize,
        /// The workers it starts, and where the report goes.
        #[command(flatten)]
        workers: WorkerArgs,
        /// Exit non-zero unless every ratio meets its target (lost requests always fail).
        #[arg(long)]
        strict: bool,
    },
    /// One worker's throughput/latency curve up to saturation, its capacity at a p99 target,
    /// and the KEDA scaler values that follow (starts its own `ember serve`).
    Sweep {
        /// Rate steps as fractions of the closed-loop maximum.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0.1,0.25,0.4,0.55,0.7,0.85,1.0,1.15"
        )]
        steps: Vec<f64>,
        /// Length of each step.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        step_duration: Duration,
        /// Latency objective (p99 of realtime requests).
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        p99_target: Duration,
        /// The worker it starts, and where the report goes.
        #[command(flatten)]
        workers: WorkerArgs,
    },
    /// Offer load to workers already serving (started separately) and report.
    Run {
        /// Models to load, requests spread evenly.
        #[arg(long = "model", required = true, value_delimiter = ',')]
        models: Vec<String>,
        /// Arrival process.
        #[arg(long, value_enum, default_value_t = ArrivalKind::Poisson)]
        arrival: ArrivalKind,
        /// Offered requests per second (open loop).
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Requests in flight (closed loop).
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Requests to send.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Share of realtime (RPC) requests; the rest go to the batch lane.
        #[arg(long, default_value_t = 0.5)]
        realtime_share: f64,
        /// Deadline of each request.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<Duration>,
        /// Request bodies, one OIP V2 JSON per line [default: held-out digits].
        #[arg(long)]
        input: Option<PathBuf>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// The `ember serve` workers a scenario starts, and where its report goes.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// Largest batch of the (batched) workers.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Repository holding the digits model.
    #[arg(long, default_value = "models")]
    model_repo: PathBuf,
    /// The `ember` binary [default: beside this one].
    #[arg(long)]
    ember_bin: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArrivalKind {
    Fixed,
    Poisson,
    Closed,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ember-loadtest: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Ratios {
            requests,
            in_flight,
            workers,
            strict,
        } => {
            let options = ratios::RatiosOptions {
                url: cli.amqp_url,
                ember: worker::ember_bin(workers.ember_bin.as_deref())?,
                model_repo: workers.model_repo,
                requests,
                in_flight,
                max_batch: workers.max_batch,
            };
            let report = ratios::run(&options).await?;
            println!("{}", ratios::markdown(&report));
            write_json(workers.json.as_ref(), &report)?;
            let met = report.meets_target.values().all(|m| *m);
            Ok(if report.lost > 0 || (strict && !met) {
                1
            } else {
                0
            })
        }
        Command::Sweep {
            steps,
            step_duration,
            p99_target,
            workers,
        } => {
            let options = sweep::SweepOptions {
                url: cli.amqp_url,
                ember: worker::ember_bin(workers.ember_bin.as_deref())?,
                model_repo: workers.model_repo,
                max_batch: workers.max_batch,
                steps,
                step_duration,
                p99_target,
            };
            let report = sweep::run(&options).await?;
            println!("{}", sweep::markdown(&report));
            write_json(workers.json.as_ref(), &report)?;
            let lost: u64 = report.steps.iter().map(|s| s.lost).sum();
            Ok(if lost > 0 { 1 } else { 0 })
        }
        Command::Run {
            models,
            arrival,
            rate,
            in_flight,
            requests,
            realtime_share,
            deadline,
            input,
            json,
        } => {
            let payloads = match input {
                Some(path) => read_payloads(&path)?,
                None => ratios::digit_payloads(requests),
            };
            let spec = LoadSpec {
                targets: models
                    .into_iter()
                    .map(|model| Target {
                        model,
                        payloads: payloads.clone(),
                    })
                    .collect(),
                arrival: match arrival {
                    ArrivalKind::Fixed => Arrival::Fixed { rate },
                    ArrivalKind::Poisson => Arrival::Poisson { rate },
                    ArrivalKind::Closed => Arrival::Closed { in_flight },
                },
                requests,
                realtime_share,
                deadline,
                seed: 7,
                drain: Duration::from_secs(30),
            };
            let report = load::run(&cli.amqp_url, &spec).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            write_json(json.as_ref(), &report)?;
            Ok(if report.lost > 0 { 1 } else { 0 })
        }
    }
}

fn read_payloads(path: &PathBuf) -> anyhow::Result<Arc<Vec<Bytes>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let payloads: Vec<Bytes> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Bytes::from(l.to_owned()))
        .collect();
    anyhow::ensure!(!payloads.is_empty(), "{} holds no requests", path.display());
    Ok(Arc::new(payloads))
}

fn write_json(path: Option<&PathBuf>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
