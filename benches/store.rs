//! Model store benchmark against Azurite on 127.0.0.1:10000 (and RabbitMQ for the start-up
//! figure), everything side by side in one run:
//!
//! - cold `ember models pull` of a 64 MiB version vs `curl` of the same blob from the same
//!   Azurite (alternated, medians): the pull's download throughput ÷ curl's;
//! - `ember serve` start-up (process start → "worker ready", digits from `az://`) with a cold
//!   cache and with a warm one.
//!
//! `cargo bench --bench store [-- --rounds N]`

use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::container::PublicAccess;
use azure_storage_blobs::prelude::ClientBuilder;
use bytes::Bytes;
use ember::models::Architecture;
use ember::store::{
    BlobAuth, Manifest, ModelName, Repository, StoreOptions, Version, WeightCache, sha256_hex,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WEIGHTS: usize = 64 << 20;
const STORAGE: &str = "UseDevelopmentStorage=true";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds `curl` takes to download `url` to /dev/null.
fn curl(url: &str) -> f64 {
    let output = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{time_total}", url])
        .output()
        .expect("curl");
    assert!(output.status.success(), "curl {url} failed");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn ember(args: &[&str], cache: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args(args)
        .env("AZURE_STORAGE_CONNECTION_STRING", STORAGE)
        .env("EMBER_CACHE_DIR", cache);
    command
}

/// The pull's JSON report, from a fresh cache.
fn cold_pull(repo: &str) -> serde_json::Value {
    let cache = tempfile::tempdir().unwrap();
    let output = ember(
        &["models", "pull", "big", "--json", "--model-repo", repo],
        cache.path(),
    )
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Seconds from spawning `ember serve` to its "worker ready" line.
fn serve_start(repo: &str, cache: &std::path::Path) -> f64 {
    let started = Instant::now();
    let mut child = ember(
        &[
            "serve",
            "--transport",
            "amqp",
            "--model",
            "digits",
            "--model-repo",
            repo,
        ],
        cache,
    )
    .env("EMBER_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("worker ready"));
    let elapsed = started.elapsed().as_secs_f64();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    lines.for_each(drop); // its drain log, until it exits
    assert!(
        child.wait().unwrap().success(),
        "ember serve did not drain cleanly"
    );
    assert!(ready, "ember serve exited before it was ready");
    elapsed
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(5usize);
    let container = format!("bench-store-{}", std::process::id());
    let location = CloudLocation::Emulator {
        address: "127.0.0.1".into(),
        port: 10000,
    };
    ClientBuilder::with_location(location, StorageCredentials::emulator())
        .container_client(&container)
        .create()
        .public_access(PublicAccess::Blob)
        .await
        .expect("Azurite on 127.0.0.1:10000");
    let address = format!("az://{container}");
    let scratch = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        blob: BlobAuth {
            connection_string: Some(STORAGE.into()),
            ..BlobAuth::default()
        },
        cache: Some(WeightCache::new(scratch.path(), 1 << 30)),
    };
    let repo = Repository::open_with(&address, &options).unwrap();

    // A 64 MiB version (identity network: the weights are only moved and verified).
    let weights: Vec<u8> = (0..WEIGHTS as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let architecture = Architecture::Identity { width: 4 };
    let (inputs, outputs) = architecture.signature();
    let manifest = Manifest {
        name: ModelName::parse("big").unwrap(),
        version: Version::parse("1").unwrap(),
        architecture,
        precision: Default::default(),
        inputs,
        outputs,
        labels: Vec::new(),
        sha256: sha256_hex(&weights),
        assets: Default::default(),
        source: None,
        metrics: Default::default(),
        training: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    repo.publish(&manifest, Bytes::from(weights), &Default::default())
        .await
        .unwrap();
    repo.set_alias(
        &manifest.name,
        &Version::parse("production").unwrap(),
        &manifest.version,
    )
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:10000/devstoreaccount1/{container}/big/1/model.bin");

    curl(&url); // warm Azurite's own caches equally for both
    let (mut curl_s, mut pull_s, mut pull_wall_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        curl_s.push(curl(&url));
        let started = Instant::now();
        let report = cold_pull(&address);
        pull_wall_s.push(started.elapsed().as_secs_f64());
        pull_s.push(report["download_s"].as_f64().unwrap());
    }
    let mib = WEIGHTS as f64 / (1 << 20) as f64;
    let (curl_s, pull_s, pull_wall_s) = (median(curl_s), median(pull_s), median(pull_wall_s));
    println!("cold pull of {mib:.0} MiB from Azurite, medians of {rounds}:");
    println!(
        "  curl               {:>7.3} s  {:>7.1} MiB/s",
        curl_s,
        mib / curl_s
    );
    println!(
        "  ember models pull  {:>7.3} s  {:>7.1} MiB/s (download only; whole process {:.3} s)",
        pull_s,
        mib / pull_s,
        pull_wall_s
    );
    println!("  pull / curl throughput: {:.2}", curl_s / pull_s);

    // Start-up of a worker serving digits from az://, cold cache vs warm.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/models/digits/1");
    repo.push(std::path::Path::new(shipped)).await.unwrap();
    let digits = ModelName::parse("digits").unwrap();
    repo.promote(
        &digits,
        &Version::parse("1").unwrap(),
        &Version::parse("production").unwrap(),
    )
    .await
    .unwrap();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let cache = tempfile::tempdir().unwrap();
        cold.push(serve_start(&address, cache.path()));
        warm.push(serve_start(&address, cache.path()));
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("ember serve start → ready (digits from az://, RabbitMQ), medians of {rounds}:");
    println!(
        "  cold cache {:.3} s, warm cache {:.3} s",
        median(cold),
        median(warm)
    );
}
