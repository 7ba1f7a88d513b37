//! `ember train`: train a model and publish it as a new version.

use super::args::StoreArgs;
use super::models::promotion_outcome;
use crate::runtime::Device;
use crate::store::{DEFAULT_ALIAS, MetricGate, ModelName, Version};
use crate::train::{self, TrainOptions};
use clap::Args;
use std::path::PathBuf;

/// `ember train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model kind to train.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(train::KINDS))]
    pub kind: String,
    /// Repository to publish the new version to (a directory or `az://...`).
    #[arg(long, env = "EMBER_MODEL_REPO", default_value = "models")]
    pub out: String,
    /// Credentials of an `az://` repository.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Model name (default: the kind).
    #[arg(long)]
    pub name: Option<ModelName>,
    /// Folder holding the data set (digits: digits.csv[.gz]; ai4i: the UCI ai4i2020.csv[.gz];
    /// cwru: recordings.csv + <number>.gz or .f32, as in data/cwru or from data/cwru.py);
    /// default: the real data built into ember.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Passes over the training data [default: digits 30, ai4i 60, cwru 40].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed of the split, shuffles and initialisation [default: 7].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to compute: cpu, cuda or cuda:N [default: cuda:0 in a CUDA build, else cpu].
    #[arg(long, env = "EMBER_DEVICE", default_value_t)]
    pub device: Device,
    /// Point `production` at the new version.
    #[arg(long)]
    pub promote: bool,
    /// Then point `production` at the new version only if it beats the current one on this
    /// metric (as `models promote --if-better`); exit 3 if it does not.
    #[arg(long, value_name = "METRIC", value_parser = MetricGate::parse, conflicts_with = "promote")]
    pub promote_if_better: Option<MetricGate>,
}

/// Trains, publishes, and promotes if asked; exit status [`NOT_PROMOTED`] when the gate kept the
/// production version.
pub async fn run(args: TrainArgs) -> anyhow::Result<i32> {
    let repo = args.store.open(&args.out, None)?;
    let options = TrainOptions {
        epochs: args.epochs,
        seed: args.seed,
        data: args.data,
        device: args.device,
        promote: args.promote,
    };
    let name = match args.name {
        Some(name) => name,
        None => ModelName::parse(&args.kind)?,
    };
    let manifest = train::train(&repo, &args.kind, &name, &options).await?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    let Some(gate) = args.promote_if_better else {
        return Ok(0);
    };
    let alias = Version::parse(DEFAULT_ALIAS)?;
    let promotion = repo
        .promote_if_better(&name, &manifest.version, &alias, &gate)
        .await?;
    let (message, code) = promotion_outcome(&name, &manifest.version, &alias, &gate, promotion);
    eprintln!("{message}");
    Ok(code)
}
