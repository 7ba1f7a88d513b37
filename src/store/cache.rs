//! The local, content-addressed cache of model weights fetched from a remote store.
//!
//! Entries are named by their sha256 (`<dir>/sha256/<hex>`), so a version's weights are fetched
//! once per node whatever its name, and an entry is valid if and only if its bytes hash to its
//! name: the reader checks, and [`WeightCache::remove`]s an entry that does not. New entries are written
//! beside (`<dir>/tmp/`) and renamed into place, so a partial download is never visible. Reads
//! touch the entry's mtime; past the size limit, the least recently used entries go first.

use super::StoreError;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Default for `--cache-max-bytes`: 20 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 20 << 30;

/// A directory of verified weights keyed by sha256.
#[derive(Debug, Clone)]
pub struct WeightCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl WeightCache {
    /// A cache in `dir` (created on first write) holding at most `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// Where the cache is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(StoreError::Invalid(format!(
                "{sha256:?} is not a sha256 (64 hex digits)"
            )));
        }
        Ok(self.dir.join("sha256").join(sha256.to_ascii_lowercase()))
    }

    /// The entry for `sha256`, if cached (the caller verifies it).
    pub async fn get(&self, sha256: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.entry(sha256)?;
        let Ok(bytes) = tokio::fs::read(&path).await else {
            return Ok(None);
        };
        // Recently used: touch, for LRU eviction (best effort).
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Ok(Some(Bytes::from(bytes)))
    }

    /// Drops the entry for `sha256` (found corrupt).
    pub async fn remove(&self, sha256: &str) -> Result<(), StoreError> {
        let path = self.entry(sha256)?;
        tracing::warn!(path = %path.display(), "cache entry corrupt; removing it");
        let _ = tokio::fs::remove_file(&path).await;
        Ok(())
    }

    /// Keeps `bytes`, already verified to hash to `sha256`, then trims the cache to its limit.
    pub async fn put(&self, sha256: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.entry(sha256)?;
        let cache = self.clone();
        tokio::task::spawn_blocking(move || {
            let io =
                |e: std::io::Error| StoreError::io_by(format!("cache {}", cache.dir.display()), e);
            let tmp_dir = cache.dir.join("tmp");
            std::fs::create_dir_all(&tmp_dir).map_err(io)?;
            std::fs::create_dir_all(path.parent().expect("entries live in sha256/")).map_err(io)?;
            let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io)?;
            std::io::Write::write_all(&mut tmp.as_file(), &bytes).map_err(io)?;
            tmp.as_file().sync_all().map_err(io)?;
            tmp.persist(&path).map_err(|e| io(e.error))?;
            cache.evict(&path);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::io_by("cache write", e))?
    }

    /// Removes least recently used entries (never `keep`) until the cache fits its limit.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("sha256")) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), bytes = len, "evicted from the model cache");
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sha256_hex;

    fn weights(n: u8) -> (String, Bytes) {
        let bytes = Bytes::from(vec![n; 1000]);
        (sha256_hex(&bytes), bytes)
    }

    #[tokio::test]
    async fn returns_what_was_put_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache = WeightCache::new(dir.path(), 1 << 20);
        let (sha, bytes) = weights(1);
        assert_eq!(cache.get(&sha).await.unwrap(), None);
        cache.put(&sha, bytes.clone()).await.unwrap();
        assert_eq!(cache.get(&sha).await.unwrap(), Some(bytes));
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = WeightCache::new(dir.path(), 2500);
        let (a, b, c) = (weights(1), weights(2), weights(3));
        cache.put(&a.0, a.1.clone()).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&b.0, b.1.clone()).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.get(&a.0).await.unwrap().is_some()); // a is now newer than b
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&c.0, c.1.clone()).await.unwrap();
        assert!(
            cache.get(&b.0).await.unwrap().is_none(),
            "b was least recently used"
        );
        assert!(cache.get(&a.0).await.unwrap().is_some());
        assert!(cache.get(&c.0).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn refuses_names_that_are_not_hashes() {
        let cache = WeightCache::new("/nonexistent", 1);
        for name in ["../../etc/passwd", "abc", &"g".repeat(64)] {
            assert!(matches!(cache.get(name).await, Err(StoreError::Invalid(_))));
        }
    }
}
