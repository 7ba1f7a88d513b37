//! The local-directory model store (the embedded default).

use super::{ModelStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// A model repository in a local directory, laid out as `docs/protocol.md` describes.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Joins a store key to the root, refusing anything but plain relative segments.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let plain = !key.contains('\\')
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(StoreError::Invalid(format!("refusing store key {key:?}")));
        }
        Ok(self.root.join(relative))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound(format!("{} not found", path.display())),
        _ => StoreError::io_by(path.display().to_string(), e),
    }
}

#[async_trait]
impl ModelStore for FsStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| io_error(&path, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)?
        };
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&dir, e)),
        };
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| io_error(&dir, e))? {
            let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(&dir, e))?;
        // Write beside, then rename: a reader never sees half a file.
        let partial = path.with_extension("partial");
        tokio::fs::write(&partial, &bytes)
            .await
            .map_err(|e| io_error(&partial, e))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| io_error(&path, e))
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_keys_that_leave_the_root() {
        let store = FsStore::new("/nonexistent-root");
        for key in ["../x", "/etc/passwd", "a/../../b", "a\\..\\b", "./a"] {
            assert!(
                matches!(store.get(key).await, Err(StoreError::Invalid(_))),
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn put_then_get_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        store
            .put("m/1/model.bin", Bytes::from_static(b"w"))
            .await
            .unwrap();
        assert_eq!(
            store.get("m/1/model.bin").await.unwrap(),
            Bytes::from_static(b"w")
        );
        assert_eq!(store.list("").await.unwrap(), vec!["m"]);
        assert_eq!(store.list("m").await.unwrap(), vec!["1"]);
        assert!(matches!(
            store.get("m/2/model.bin").await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn an_unreadable_file_keeps_the_system_error_as_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m/1/model.bin")).unwrap();
        let error = FsStore::new(dir.path())
            .get("m/1/model.bin")
            .await
            .unwrap_err();
        let cause = std::error::Error::source(&error).expect("the io::Error");
        assert!(
            cause.downcast_ref::<std::io::Error>().is_some(),
            "{cause:?}"
        );
        let logged = crate::client::chain::Chain(&error).to_string();
        assert!(logged.starts_with("store I/O: "), "{logged}");
        assert!(logged.ends_with(&cause.to_string()), "{logged}");
    }
}
