//! The Azure Blob model store against a real Azurite: round trips, the weight cache, parallel
//! ranged transfers, every bad input and fault the store must report clearly, and network
//! faults (a connection cut mid-body, the storage going away mid-download) through a proxy.

mod common;

use common::proxy::FaultProxy;
use common::*;
use ember::store::{ModelName, Repository, StoreError, Version};
use std::time::{Duration, Instant};

fn name(s: &str) -> ModelName {
    ModelName::parse(s).unwrap()
}

fn version(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// A fresh container and a repository on it under a prefix, with its own cache.
async fn fresh_repo(cache: &std::path::Path) -> (String, Repository) {
    let container = azurite_container("store").await;
    let options = azurite_options(&azurite_connection_string(), cache);
    let repo = Repository::open_with(&format!("az://{container}/team/a"), &options).unwrap();
    (container, repo)
}

/// The store under a `fresh_repo` repository, to write what a repository never would.
fn raw_store(container: &str, cache: &std::path::Path) -> ember::store::BlobStore {
    let options = azurite_options(&azurite_connection_string(), cache);
    ember::store::BlobStore::open(&format!("az://{container}/team/a"), &options.blob).unwrap()
}

/// Random-looking bytes, so nothing along the way can compress or dedupe them.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn pushed_versions_are_listed_resolved_and_loaded_verified() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, repo) = fresh_repo(cache.path()).await;
    let weights = digits_weights();
    repo.push(&local_version(local.path(), "digits", "1", &weights))
        .await
        .unwrap();
    repo.push(&local_version(local.path(), "digits", "2", &weights))
        .await
        .unwrap();
    repo.promote(&name("digits"), &version("1"), &version("production"))
        .await
        .unwrap();

    assert_eq!(repo.models().await.unwrap(), vec![name("digits")]);
    assert_eq!(
        repo.versions(&name("digits")).await.unwrap(),
        vec![version("1"), version("2")]
    );
    let resolved = repo
        .resolve(&name("digits"), &version("production"))
        .await
        .unwrap();
    assert_eq!(resolved, version("1"));
    let artifact = repo.load(&name("digits"), &resolved).await.unwrap();
    assert_eq!(artifact.weights, weights);
    assert!(!artifact.fetch.cache_hit);

    // Pushing the same version again is a no-op; other weights under its name are refused.
    repo.push(&local_version(local.path(), "digits", "1", &weights))
        .await
        .unwrap();
    let other = local_version(local.path(), "digits", "1", b"other weights");
    let refused = repo.push(&other).await.unwrap_err();
    assert!(refused.to_string().contains("immutable"), "{refused}");
}

#[tokio::test]
async fn a_warm_cache_serves_weights_without_downloading_them() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (container, repo) = fresh_repo(cache.path()).await;
    let weights = digits_weights();
    repo.push(&local_version(local.path(), "digits", "1", &weights))
        .await
        .unwrap();
    let cold = repo.load(&name("digits"), &version("1")).await.unwrap();
    assert!(!cold.fetch.cache_hit);

    // A second worker on the same node, with the weights gone from the store: only the
    // manifest is read remotely, the weights come from the cache.
    let options = azurite_options(&azurite_connection_string(), cache.path());
    let second = Repository::open_with(&format!("az://{container}/team/a"), &options).unwrap();
    let store =
        ember::store::BlobStore::open(&format!("az://{container}/team/a"), &options.blob).unwrap();
    use ember::store::ModelStore;
    store
        .put("digits/1/model.bin", bytes::Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    let warm = second.load(&name("digits"), &version("1")).await.unwrap();
    assert!(warm.fetch.cache_hit);
    assert_eq!(warm.weights, weights);

    // A tampered cache entry is dropped and the store read again (here: refused, since the
    // store's weights were replaced too).
    let entry = cache.path().join("sha256").join(&cold.manifest.sha256);
    std::fs::write(&entry, b"tampered").unwrap();
    let error = second
        .load(&name("digits"), &version("1"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Integrity { .. }), "{error}");
    assert!(!entry.exists());
}

#[tokio::test]
async fn big_weights_go_up_in_blocks_and_come_down_in_parallel_ranges() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, repo) = fresh_repo(cache.path()).await;
    let weights = noise(3 * ember::store::BLOCK_SIZE + 12_345);
    repo.push(&local_version(local.path(), "big", "1", &weights))
        .await
        .unwrap();
    let artifact = repo.load(&name("big"), &version("1")).await.unwrap();
    assert_eq!(artifact.weights.len(), weights.len());
    assert!(artifact.weights == weights, "downloaded bytes differ");
}

#[tokio::test]
async fn every_bad_repository_state_is_reported_clearly() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (container, repo) = fresh_repo(cache.path()).await;
    let raw = raw_store(&container, cache.path());
    use ember::store::ModelStore;
    let weights = digits_weights();

    // Missing container.
    let options = azurite_options(&azurite_connection_string(), cache.path());
    let missing = Repository::open_with("az://no-such-container-here", &options).unwrap();
    let error = missing.models().await.unwrap_err().to_string();
    assert!(error.contains("does not exist"), "{error}");

    // Missing model.
    let error = repo
        .resolve(&name("ghost"), &version("production"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error}");
    assert!(error.to_string().contains("ghost"), "{error}");

    // Manifest without weights.
    let dir = local_version(local.path(), "noweights", "1", &weights);
    raw.put(
        "noweights/1/manifest.json",
        std::fs::read(dir.join("manifest.json")).unwrap().into(),
    )
    .await
    .unwrap();
    let error = repo
        .load(&name("noweights"), &version("1"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no weights"), "{error}");

    // sha256 mismatch.
    repo.push(&local_version(local.path(), "tampered", "1", &weights))
        .await
        .unwrap();
    raw.put("tampered/1/model.bin", bytes::Bytes::from_static(b"evil"))
        .await
        .unwrap();
    let error = repo
        .load(&name("tampered"), &version("1"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Integrity { .. }), "{error}");

    // Alias pointing to a missing version.
    repo.push(&local_version(local.path(), "aliased", "1", &weights))
        .await
        .unwrap();
    raw.put(
        "aliased/aliases.json",
        br#"{"production":"7"}"#.as_slice().into(),
    )
    .await
    .unwrap();
    let error = repo
        .resolve(&name("aliased"), &version("production"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("points to version 7"), "{error}");
    let error = repo
        .promote(&name("aliased"), &version("9"), &version("production"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error}");

    // Malformed aliases.json.
    raw.put("aliased/aliases.json", b"{not json".as_slice().into())
        .await
        .unwrap();
    let error = repo.aliases(&name("aliased")).await.unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error}");
    assert!(error.to_string().contains("aliases.json"), "{error}");
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_that_never_shows_the_key() {
    let cache = tempfile::tempdir().unwrap();
    let container = azurite_container("auth").await;
    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let options = azurite_options(
        &azurite_via("http://127.0.0.1:10000", wrong_key),
        cache.path(),
    );
    let repo = Repository::open_with(&format!("az://{container}"), &options).unwrap();
    let error = repo.models().await.unwrap_err().to_string();
    assert!(error.contains("access denied"), "{error}");
    assert!(!error.contains(wrong_key), "{error}");
    assert!(!format!("{repo:?}").contains(wrong_key));
}

#[tokio::test]
async fn a_body_cut_short_is_retried_and_the_download_completes() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (container, repo) = fresh_repo(cache.path()).await;
    let weights = noise(2 * ember::store::BLOCK_SIZE + 1000);
    repo.push(&local_version(local.path(), "cut", "1", &weights))
        .await
        .unwrap();

    let proxy = FaultProxy::start("127.0.0.1:10000").await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let options = azurite_options(&azurite_via(&endpoint, AZURITE_KEY), cache.path());
    let via_proxy = Repository::open_with(&format!("az://{container}/team/a"), &options).unwrap();
    // The first connection (manifest, then the first range) is cut 1 MiB in.
    proxy.cut_next_after(1 << 20);
    let artifact = via_proxy.load(&name("cut"), &version("1")).await.unwrap();
    assert!(artifact.weights == weights);
    assert!(proxy.connections() >= 2, "the cut connection was replaced");
}

#[tokio::test]
async fn storage_gone_mid_download_fails_clearly_after_retries() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (container, repo) = fresh_repo(cache.path()).await;
    let weights = noise(6 * ember::store::BLOCK_SIZE);
    repo.push(&local_version(local.path(), "gone", "1", &weights))
        .await
        .unwrap();

    let proxy = FaultProxy::start("127.0.0.1:10000").await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let options = azurite_options(&azurite_via(&endpoint, AZURITE_KEY), cache.path());
    let via_proxy = Repository::open_with(&format!("az://{container}/team/a"), &options).unwrap();
    // Storage goes away 4 MiB into the weights, and stays away.
    proxy.down_after(4 << 20);
    let started = Instant::now();
    let error = via_proxy
        .load(&name("gone"), &version("1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(proxy.forwarded() >= 4 << 20, "the download had started");
    assert!(error.contains("gave up after"), "{error}");
    assert!(error.contains("model.bin"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "gave up in {:?}",
        started.elapsed()
    );
    assert!(
        !cache
            .path()
            .join("sha256")
            .join(ember::store::sha256_hex(&weights))
            .exists(),
        "nothing partial is cached"
    );
}

/// Adds asset `name` with `bytes` to the local version `dir` and lists it in its manifest.
fn with_asset(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["assets"][name] = ember::store::sha256_hex(bytes).into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    if let Some(parent) = dir.join(name).parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[tokio::test]
async fn assets_travel_with_their_version_verified_and_cached() {
    use ember::store::ModelStore;
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (container, repo) = fresh_repo(cache.path()).await;
    let raw = raw_store(&container, cache.path());
    let weights = digits_weights();

    let dir = local_version(local.path(), "text", "1", &weights);
    with_asset(&dir, "tokenizer.json", b"{\"vocab\": 1}");
    repo.push(&dir).await.unwrap();
    let first = repo.load(&name("text"), &version("1")).await.unwrap();
    assert_eq!(first.assets["tokenizer.json"].as_ref(), b"{\"vocab\": 1}");
    assert_eq!(first.fetch.bytes, weights.len() + 12);
    assert!(!first.fetch.cache_hit);
    let second = repo.load(&name("text"), &version("1")).await.unwrap();
    assert!(
        second.fetch.cache_hit,
        "weights and asset come from the cache"
    );

    // An asset changed in the store is refused, naming the file.
    let dir = local_version(local.path(), "text", "2", &weights);
    with_asset(&dir, "tokenizer.json", b"{\"vocab\": 2}");
    repo.push(&dir).await.unwrap();
    raw.put("text/2/tokenizer.json", bytes::Bytes::from_static(b"evil"))
        .await
        .unwrap();
    let error = repo.load(&name("text"), &version("2")).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Integrity { file, .. } if file == "tokenizer.json"),
        "{error}"
    );

    // A missing asset, and names that would leave the version's folder.
    let dir = local_version(local.path(), "text", "3", &weights);
    with_asset(&dir, "tokenizer.json", b"{}");
    for file in ["model.bin", "manifest.json"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        raw.put(&format!("text/3/{file}"), bytes.into())
            .await
            .unwrap();
    }
    let error = repo.load(&name("text"), &version("3")).await.unwrap_err();
    assert!(
        error.to_string().contains("no asset tokenizer.json"),
        "{error}"
    );
    for bad in ["../escape", "a/b"] {
        let dir = local_version(local.path(), "bad", "1", &weights);
        with_asset(&dir, bad, b"x");
        let error = repo.push(&dir).await.unwrap_err();
        assert!(error.to_string().contains("asset name"), "{bad}: {error}");
    }
}
