//! `ember-loadtest`: drives Ember through RabbitMQ the way production traffic does and reports
//! latency (HDR histograms from intended send times), throughput, errors and lost requests,
//! with the broker and compute ceilings measured in the same run.

mod baseline;
mod clients;
mod compute;
mod elastic;
mod load;
mod payloads;
mod plot;
mod ratios;
mod soak;
mod sweep;
mod traffic;
mod worker;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ember::store::{ModelName, Repository, Version};
use load::{Arrival, LoadSpec, Target};
use std::path::{Path, PathBuf};
use std::time::Duration;
use traffic::Workers;

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
    /// Send binary tensor data both ways (the Open Inference Protocol's binary extension: inputs
    /// framed after the JSON header, every output asked for as binary) instead of JSON numbers.
    #[arg(long, global = true)]
    binary: bool,
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
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        report: ReportArgs,
        /// Exit non-zero unless every ratio meets its target (lost requests always fail).
        #[arg(long)]
        strict: bool,
    },
    /// The hybrid clients' overheads: gateway ÷ RPC and batch submission ÷ raw publishing
    /// (starts its own `ember serve` and `ember gateway`).
    Clients {
        /// Requests per measurement.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests in flight in the RPC and gateway runs.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        report: ReportArgs,
        /// Exit non-zero unless both ratios meet their target.
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
            default_value = "0.1,0.25,0.4,0.55,0.7,0.85,1.0,1.15,1.3,1.5"
        )]
        steps: Vec<f64>,
        /// Length of each step.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        step_duration: Duration,
        /// Latency objective (p99 of realtime requests).
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        p99_target: Duration,
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Offer the load described to the models and report latency, throughput, errors, losses.
    Run {
        /// Requests to send.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// The networks alone on one device (CPU or GPU), over batch sizes and precisions; with
    /// `--export`, also what `benches/gpu/pytorch_reference.py` needs to run their PyTorch twins.
    Compute(compute::ComputeArgs),
    /// KEDA's control loop driving real workers: the ScaledObject of --keda-dir emulated on
    /// its broker's metrics (RabbitMQ's management API; Service Bus's queue runtime properties,
    /// of EMBER_SERVICEBUS_CONNECTION_STRING's namespace or else a local test double) and the
    /// workers' own, each replica a real `ember serve`, traffic from a trace; reports the first
    /// request's wait at zero replicas, replica-seconds, scale events, lost and duplicate
    /// answers.
    Elastic {
        /// The ScaledObjects to emulate (rabbitmq, azure-servicebus and prometheus triggers).
        #[arg(long, default_value = "keda/rabbitmq")]
        keda_dir: PathBuf,
        /// The worker Deployment (its terminationGracePeriodSeconds).
        #[arg(long, default_value = "manifests/base/worker-digits.yaml")]
        deployment: PathBuf,
        /// Model to serve and load (its ScaledObject is the one watching its queues).
        #[arg(long, default_value = "digits")]
        model: String,
        /// Length of the trace (the run lasts until the fleet is back at its minimum).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Built-in traffic shape.
        #[arg(long, value_enum, default_value_t = elastic::trace::Shape::Burst)]
        shape: elastic::trace::Shape,
        /// Arrival times from a CSV (first column, seconds) instead of --shape.
        #[arg(long, conflicts_with = "shape")]
        trace: Option<PathBuf>,
        /// Peak offered rate of the shape, requests per second.
        #[arg(long, default_value_t = 400.0)]
        peak_rate: f64,
        /// Share of realtime (RPC) requests; the rest go to the batch lane.
        #[arg(long, default_value_t = 0.5)]
        realtime_share: f64,
        /// Delay before a new replica's container starts (image pull, scheduling; cluster time).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        pod_start: Duration,
        /// Run Kubernetes' clocks (polling, cooldown, HPA, pod start, grace) this many times
        /// faster than real time.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Override the ScaledObject's pollingInterval (seconds), to compare settings.
        #[arg(long, value_name = "SECONDS")]
        polling_interval: Option<f64>,
        /// Override the ScaledObject's cooldownPeriod (seconds).
        #[arg(long, value_name = "SECONDS")]
        cooldown_period: Option<f64>,
        /// Multiply every trigger's target and activation values, the ScaledJobs' too, by this
        /// (e.g. 4: four times the backlog per replica).
        #[arg(long, default_value_t = 1.0)]
        value_factor: f64,
        /// RabbitMQ's management API (credentials: those of the AMQP URL).
        #[arg(
            long,
            env = "EMBER_RABBITMQ_MANAGEMENT",
            default_value = "http://127.0.0.1:15672"
        )]
        management_url: String,
        /// A further flag for each `ember serve` (repeatable).
        #[arg(long = "serve-arg", allow_hyphen_values = true)]
        serve_args: Vec<String>,
        /// The repository the replicas load from, e.g. `az://<container>/models` with
        /// AZURE_STORAGE_CONNECTION_STRING set [default: --model-repo]. Each replica starts with
        /// an empty weight cache, as the Deployment's emptyDir.
        #[arg(long)]
        replicas_model_repo: Option<String>,
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Constant open-loop load for a long time, sampling the worker's memory: fails on any
    /// lost request or on RSS growing by more than 10 % (and 8 MiB) once warm (after 20 % of
    /// the run, and at least until the worker's memory of answered ids has filled).
    Soak {
        /// How long to offer load.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        workers: WorkerArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
}

/// What load `run` and `soak` offer, and to whom.
#[derive(Debug, Args)]
struct TrafficArgs {
    /// Models to load, requests spread evenly.
    #[arg(long = "model", default_value = "digits", value_delimiter = ',')]
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
    /// Share of realtime (RPC) requests; the rest go to the batch lane.
    #[arg(long, default_value_t = 0.5)]
    realtime_share: f64,
    /// Deadline of each request.
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
    /// Request bodies, one OIP V2 JSON per line [default: random tensors shaped by each
    /// model's manifest in --model-repo].
    #[arg(long)]
    input: Option<PathBuf>,
    /// Load workers already serving the models instead of starting one.
    #[arg(long)]
    external: bool,
    /// With --external: the worker's pid, to sample its memory and CPU.
    #[arg(long, requires = "external")]
    worker_pid: Option<u32>,
    /// A further flag for the `ember serve` it starts (repeatable), e.g.
    /// --serve-arg=--max-batch-delay=5ms.
    #[arg(
        long = "serve-arg",
        allow_hyphen_values = true,
        conflicts_with = "external"
    )]
    serve_args: Vec<String>,
}

/// The `ember serve` workers a scenario starts.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// Largest batch of the (batched) workers (`ember serve --max-batch-size`).
    #[arg(long = "max-batch-size", alias = "max-batch", default_value_t = 64)]
    max_batch: usize,
    /// Model repository the workers serve from (and request shapes are read from).
    #[arg(long, default_value = "models")]
    model_repo: PathBuf,
    /// The `ember` binary [default: beside this one].
    #[arg(long)]
    ember_bin: Option<PathBuf>,
}

/// Where the reports go besides the Markdown summary on stdout.
#[derive(Debug, Args)]
struct ReportArgs {
    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
}

impl ReportArgs {
    fn write_json(&self, report: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_vec_pretty(report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Draws into `<plots>/<name>` with `draw`, when plots were asked for.
    fn plot(
        &self,
        name: &str,
        draw: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if let Some(dir) = &self.plots {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(name);
            draw(&path)?;
            eprintln!("plot: {}", path.display());
        }
        Ok(())
    }
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
        Ok(passed) => std::process::exit(if passed { 0 } else { 1 }),
        Err(e) => {
            eprintln!("ember-loadtest: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the command; false when it measured a failure (lost requests, a missed target).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let (url, binary) = (cli.amqp_url, cli.binary);
    match cli.command {
        Command::Ratios {
            requests,
            in_flight,
            workers,
            report: out,
            strict,
        } => {
            let options = ratios::RatiosOptions {
                url,
                ember: worker::ember_bin(workers.ember_bin.as_deref())?,
                model_repo: workers.model_repo,
                requests,
                in_flight,
                max_batch: workers.max_batch,
                binary,
            };
            let report = ratios::run(&options).await?;
            println!("{}", ratios::markdown(&report));
            out.write_json(&report)?;
            out.plot("ratios-half-load.svg", |path| {
                let half = &report.runs["digits_half_load"];
                plot::timeline(path, "digits at half the max rate", &half.timeline)
            })?;
            let met = report.meets_target.values().all(|m| *m);
            Ok(report.lost == 0 && (met || !strict))
        }
        Command::Clients {
            requests,
            in_flight,
            workers,
            report: out,
            strict,
        } => {
            let options = clients::ClientsOptions {
                url,
                ember: worker::ember_bin(workers.ember_bin.as_deref())?,
                model_repo: workers.model_repo,
                requests,
                in_flight,
                binary,
            };
            let report = clients::run(&options).await?;
            println!("{}", clients::markdown(&report));
            out.write_json(&report)?;
            Ok(report.meets_target() || !strict)
        }
        Command::Sweep {
            steps,
            step_duration,
            p99_target,
            workers,
            report: out,
        } => {
            let options = sweep::SweepOptions {
                url,
                ember: worker::ember_bin(workers.ember_bin.as_deref())?,
                model_repo: workers.model_repo,
                max_batch: workers.max_batch,
                steps,
                step_duration,
                p99_target,
                binary,
            };
            let report = sweep::run(&options).await?;
            println!("{}", sweep::markdown(&report));
            out.write_json(&report)?;
            out.plot("sweep.svg", |path| plot::sweep(path, &report))?;
            Ok(report.steps.iter().all(|s| s.lost == 0))
        }
        Command::Run {
            requests,
            traffic,
            workers,
            report: out,
        } => {
            let (workers, spec) = traffic_spec(traffic, workers, requests, binary, "run").await?;
            let report = traffic::run(&url, &workers, spec).await?;
            println!("{}", load::markdown(&report));
            out.write_json(&report)?;
            out.plot("run.svg", |path| {
                plot::timeline(path, "ember-loadtest run", &report.timeline)
            })?;
            Ok(report.lost == 0)
        }
        Command::Compute(args) => compute::run(&args).await.map(|()| true),
        Command::Elastic {
            keda_dir,
            deployment,
            model,
            duration,
            shape,
            trace,
            peak_rate,
            realtime_share,
            pod_start,
            time_scale,
            polling_interval,
            cooldown_period,
            value_factor,
            management_url,
            serve_args,
            replicas_model_repo,
            workers,
            report: out,
        } => {
            anyhow::ensure!(peak_rate > 0.0, "--peak-rate must be positive");
            anyhow::ensure!(
                (0.0..=1.0).contains(&realtime_share),
                "--realtime-share must be between 0 and 1"
            );
            let arrivals = match &trace {
                Some(path) => elastic::trace::from_csv(path)?,
                None => shape.arrivals(duration.as_secs_f64(), peak_rate, 7),
            };
            let mut serve_args = serve_args;
            serve_args.extend(["--max-batch-size".to_owned(), workers.max_batch.to_string()]);
            let options = elastic::ElasticOptions {
                url,
                management: management_url,
                keda_dir,
                deployment,
                model,
                ember: worker::ember_bin(workers.ember_bin.as_deref())?,
                replicas_repo: replicas_model_repo
                    .unwrap_or_else(|| workers.model_repo.display().to_string()),
                model_repo: workers.model_repo,
                serve_args,
                duration: match &trace {
                    Some(_) => Duration::from_secs_f64(arrivals.last().copied().unwrap_or(0.0)),
                    None => duration,
                },
                arrivals,
                realtime_share,
                pod_start,
                time_scale,
                overrides: elastic::Overrides {
                    polling_s: polling_interval,
                    cooldown_s: cooldown_period,
                    value_factor,
                },
                binary,
            };
            let report = elastic::run(&options).await?;
            println!("{}", elastic::markdown(&report));
            out.write_json(&report)?;
            out.plot("elastic.svg", |path| plot::elastic(path, &report))?;
            Ok(report.lost == 0 && report.duplicates == 0)
        }
        Command::Soak {
            duration,
            traffic,
            workers,
            report: out,
        } => {
            let rate = match traffic.arrival {
                ArrivalKind::Closed => {
                    anyhow::bail!("soak offers open-loop load: use --arrival poisson or fixed")
                }
                ArrivalKind::Fixed | ArrivalKind::Poisson => traffic.rate,
            };
            let requests = (rate * duration.as_secs_f64()).ceil() as usize;
            let warm_up = soak::warm_up(duration, rate)?;
            let (workers, spec) = traffic_spec(traffic, workers, requests, binary, "soak").await?;
            let report = soak::SoakReport::new(traffic::run(&url, &workers, spec).await?, warm_up);
            println!("{}", soak::markdown(&report));
            out.write_json(&report)?;
            out.plot("soak.svg", |path| {
                plot::timeline(path, "soak", &report.load.timeline)
            })?;
            Ok(report.passed())
        }
    }
}

/// The workers and load `run` and `soak` describe.
async fn traffic_spec(
    traffic: TrafficArgs,
    workers: WorkerArgs,
    requests: usize,
    binary: bool,
    label: &str,
) -> anyhow::Result<(Workers, LoadSpec)> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&traffic.realtime_share),
        "--realtime-share must be between 0 and 1"
    );
    anyhow::ensure!(traffic.rate > 0.0, "--rate must be positive");
    let given = traffic
        .input
        .as_deref()
        .map(|path| payloads::from_jsonl(path, binary))
        .transpose()?;
    let mut targets = Vec::new();
    for (i, model) in traffic.models.into_iter().enumerate() {
        let payloads = match &given {
            Some(payloads) => payloads.clone(),
            None => {
                let manifest = production_manifest(&workers.model_repo, &model).await?;
                payloads::for_manifest(&manifest, i as u64 + 1, binary)
            }
        };
        targets.push(Target { model, payloads });
    }
    let spec = LoadSpec {
        targets,
        arrival: match traffic.arrival {
            ArrivalKind::Fixed => Arrival::Fixed { rate: traffic.rate },
            ArrivalKind::Poisson => Arrival::Poisson { rate: traffic.rate },
            ArrivalKind::Closed => Arrival::Closed {
                in_flight: traffic.in_flight,
            },
        },
        requests,
        realtime_share: traffic.realtime_share,
        deadline: traffic.deadline,
        seed: 7,
        drain: Duration::from_secs(30),
        label: label.to_owned(),
        worker_pid: None,
    };
    let workers = if traffic.external {
        Workers::External {
            pid: traffic.worker_pid,
        }
    } else {
        Workers::Spawn {
            ember: worker::ember_bin(workers.ember_bin.as_deref())?,
            model_repo: workers.model_repo,
            max_batch: workers.max_batch,
            serve_args: traffic.serve_args,
        }
    };
    Ok((workers, spec))
}

/// The manifest of `model`'s production version in `repo`, to shape its requests.
async fn production_manifest(repo: &Path, model: &str) -> anyhow::Result<ember::store::Manifest> {
    let context = || {
        format!(
            "reading the manifest of {model} from {} to shape its requests (or give --input)",
            repo.display()
        )
    };
    let repo = Repository::open(&repo.display().to_string()).with_context(context)?;
    let name = ModelName::parse(model).with_context(context)?;
    let version = repo
        .resolve(&name, &Version::parse("production")?)
        .await
        .with_context(context)?;
    repo.manifest(&name, &version).await.with_context(context)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
