//! The Azure Blob Storage model store: `az://<container>[/<prefix>]`.
//!
//! Big objects download as parallel ranged reads pinned to one ETag (so a blob replaced
//! mid-download is never stitched from two versions), each range retried on its own with
//! backoff; uploads above [`BLOCK_SIZE`] go up as parallel blocks committed in one list, so
//! readers see the old blob or the whole new one. The SDK's own retries are off: one policy,
//! here, that also covers bodies cut short.

use super::{ModelStore, StoreError, Tagged};
use crate::secret::Secret;
use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::request_options::{IfMatchCondition, Prefix, Range};
use azure_core::{RetryOptions, StatusCode, TransportOptions};
use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};
use azure_storage_blobs::blob::{BlobBlockType, BlockList};
use azure_storage_blobs::prelude::{BlobClient, ClientBuilder, ContainerClient};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Ranged reads and uploaded blocks are this big.
pub const BLOCK_SIZE: usize = 8 << 20;
/// Size of the first read of an object (reads under 4 MiB make the SDK ask for a CRC64, which
/// emulators refuse).
const FIRST_READ: usize = 4 << 20;
/// Ranges or blocks in flight at once, per object.
const PARALLEL: usize = 8;
/// Tries per request before giving up (backoff 200 ms, doubling).
const ATTEMPTS: u32 = 5;
/// Longest one request (one range of at most [`BLOCK_SIZE`]) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to authenticate to the storage account. Tried in this order: connection string,
/// account + key, account + SAS token, then Azure identity (workload identity, managed
/// identity, environment, Azure CLI) for the account. `Debug` never shows a secret.
#[derive(Debug, Clone, Default)]
pub struct BlobAuth {
    /// A storage connection string (`UseDevelopmentStorage=true` for Azurite).
    pub connection_string: Option<Secret>,
    /// Storage account name.
    pub account: Option<String>,
    /// Account access key.
    pub key: Option<Secret>,
    /// SAS token (with or without the leading `?`).
    pub sas_token: Option<Secret>,
    /// Blob endpoint instead of `https://<account>.blob.core.windows.net` (Azurite, sovereign
    /// clouds, private endpoints).
    pub endpoint: Option<String>,
    /// PEM file of a CA to trust for the endpoint's TLS certificate (a private endpoint or
    /// proxy with its own CA), beside the bundled public roots.
    pub ca_file: Option<PathBuf>,
}

/// A model repository in a blob container, under an optional prefix.
pub struct BlobStore {
    container: ContainerClient,
    /// `""` or a prefix ending in `/`.
    prefix: String,
    address: String,
    /// Set once the first write made sure the container exists.
    created: tokio::sync::OnceCell<()>,
}

impl BlobStore {
    /// Opens `az://<container>[/<prefix>]` with `auth`. Makes no request.
    pub fn open(address: &str, auth: &BlobAuth) -> Result<Self, StoreError> {
        let (container, prefix) = parse_address(address)?;
        let (location, credentials) = connect_with(auth)?;
        let account = location.account().to_owned();
        let mut builder =
            ClientBuilder::with_location(location, credentials).retry(RetryOptions::none());
        if let Some(path) = &auth.ca_file {
            builder = builder.transport(TransportOptions::new(trusting(path)?));
        }
        let container_client = builder.container_client(container);
        Ok(Self {
            container: container_client,
            prefix,
            address: format!("{} (account {account})", address.trim_end_matches('/')),
            created: tokio::sync::OnceCell::new(),
        })
    }

    fn blob(&self, key: &str) -> BlobClient {
        self.container.blob_client(format!("{}{key}", self.prefix))
    }

    /// `az://<container>/<blob>`, for messages.
    fn name(&self, blob: &BlobClient) -> String {
        format!(
            "az://{}/{}",
            self.container.container_name(),
            blob.blob_name()
        )
    }

    /// Fills `buf` with the bytes of `blob` (`total` long) from `start`, pinned to `etag`.
    async fn read_range(
        &self,
        blob: &BlobClient,
        etag: &str,
        (start, total): (usize, usize),
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let end = start + buf.len();
        let what = format!("{} bytes {start}..{end}", self.name(blob));
        // The tail is asked for open-ended: a bounded range under 4 MiB makes the SDK ask for a
        // CRC64 of it, which emulators refuse.
        let range = if end == total {
            Range::from(start as u64..)
        } else {
            Range::from(start as u64..end as u64)
        };
        let mut retries = Retries::new(&what);
        loop {
            let request = async {
                let response = blob
                    .get()
                    .range(range.clone())
                    .if_match(IfMatchCondition::Match(etag.to_owned()))
                    .into_stream()
                    .next()
                    .await
                    .ok_or_else(|| Attempt::Retry("no response".into()))?
                    .map_err(|e| classify(e, &what))?;
                fill(response.data, buf).await
            };
            if let Some(()) = retries.run(request).await? {
                return Ok(());
            }
        }
    }
}

/// An HTTP client that also trusts the CA certificates in the PEM file at `path`, otherwise
/// as the SDK's own (connections are not pooled: pooled ones can hang in hyper, see
/// `azure_core::new_reqwest_client`).
fn trusting(path: &Path) -> Result<Arc<dyn azure_core::HttpClient>, StoreError> {
    let invalid = |e: &dyn std::fmt::Display| {
        StoreError::Invalid(format!("storage CA file {}: {e}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| invalid(&e))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| invalid(&e))?;
    if certificates.is_empty() {
        return Err(invalid(&"no PEM certificate in it"));
    }
    let client = certificates
        .into_iter()
        .fold(reqwest::Client::builder(), |builder, certificate| {
            builder.add_root_certificate(certificate)
        })
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| invalid(&e))?;
    Ok(Arc::new(client))
}

/// Splits `az://container/prefix` into the container and `""` or `prefix/`.
fn parse_address(address: &str) -> Result<(String, String), StoreError> {
    let invalid = |why: &str| StoreError::Invalid(format!("model repository {address:?}: {why}"));
    let rest = address
        .strip_prefix("az://")
        .ok_or_else(|| invalid("expected az://<container>[/<prefix>]"))?;
    let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_container = (3..=63).contains(&container.len())
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if !valid_container {
        return Err(invalid(
            "container names are 3-63 lowercase letters, digits and single hyphens",
        ));
    }
    let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    if segments
        .iter()
        .any(|s| *s == "." || *s == ".." || s.contains('\\'))
    {
        return Err(invalid("the prefix may not contain . or .. segments"));
    }
    let prefix = segments.iter().map(|s| format!("{s}/")).collect();
    Ok((container.to_owned(), prefix))
}

/// Where the account is and how to sign in to it, from `auth` in the documented order.
fn connect_with(auth: &BlobAuth) -> Result<(CloudLocation, StorageCredentials), StoreError> {
    let credential_error =
        |what: &str, e: azure_core::Error| StoreError::Invalid(format!("{what}: {}", e.kind()));
    if let Some(text) = &auth.connection_string {
        // The parser's messages may quote the string; never pass them on.
        let parsed = ConnectionString::new(text.expose()).map_err(|_| {
            StoreError::Invalid("the storage connection string is malformed".into())
        })?;
        if parsed.use_development_storage == Some(true) {
            let location = match &auth.endpoint {
                Some(uri) => custom(azure_storage::clients::EMULATOR_ACCOUNT, uri),
                None => CloudLocation::Emulator {
                    address: "127.0.0.1".into(),
                    port: 10000,
                },
            };
            return Ok((location, StorageCredentials::emulator()));
        }
        let account = parsed.account_name.ok_or_else(|| {
            StoreError::Invalid("the storage connection string has no AccountName".into())
        })?;
        if let Some(key) = parsed.account_key {
            check_account_key(key, "AccountKey in the storage connection string")?;
        }
        let credentials = parsed
            .storage_credentials()
            .map_err(|e| credential_error("storage connection string", e))?;
        let endpoint = auth.endpoint.as_deref().or(parsed.blob_endpoint);
        let location = match (endpoint, parsed.endpoint_suffix) {
            (Some(uri), _) => custom(account, uri),
            (None, Some(suffix)) if suffix != "core.windows.net" => {
                let protocol = parsed
                    .default_endpoints_protocol
                    .as_ref()
                    .map_or("https".to_owned(), ToString::to_string);
                custom(account, &format!("{protocol}://{account}.blob.{suffix}"))
            }
            _ => public(account, None),
        };
        return Ok((location, credentials));
    }
    let account = auth.account.as_deref().ok_or_else(|| {
        StoreError::Invalid(
            "az:// repositories need credentials: AZURE_STORAGE_CONNECTION_STRING, or \
             AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or an Azure \
             identity (workload or managed identity)"
                .into(),
        )
    })?;
    let location = public(account, auth.endpoint.as_deref());
    let credentials = if let Some(key) = &auth.key {
        check_account_key(key.expose(), "--storage-key / AZURE_STORAGE_KEY")?;
        StorageCredentials::access_key(
            account.to_owned(),
            azure_core::auth::Secret::new(key.expose().to_owned()),
        )
    } else if let Some(token) = &auth.sas_token {
        StorageCredentials::sas_token(token.expose().trim_start_matches('?'))
            .map_err(|_| StoreError::Invalid("the SAS token is malformed".into()))?
    } else {
        let identity = azure_identity::create_credential()
            .map_err(|e| credential_error("Azure identity", e))?;
        StorageCredentials::token_credential(identity)
    };
    Ok((location, credentials))
}

/// Refuses an account key that is not base64, as every Azure key is: signing with it would fail
/// each request with the HMAC library's message instead.
fn check_account_key(key: &str, from: &str) -> Result<(), StoreError> {
    azure_core::base64::decode(key).map(drop).map_err(|_| {
        StoreError::Invalid(format!(
            "the storage account key ({from}) is not valid base64: copy it again from the \
             storage account's access keys"
        ))
    })
}

fn public(account: &str, endpoint: Option<&str>) -> CloudLocation {
    match endpoint {
        Some(uri) => custom(account, uri),
        None => CloudLocation::Public {
            account: account.to_owned(),
        },
    }
}

fn custom(account: &str, uri: &str) -> CloudLocation {
    CloudLocation::Custom {
        account: account.to_owned(),
        uri: uri.trim_end_matches('/').to_owned(),
    }
}

/// How one try of a request ended, when not well.
enum Attempt {
    /// Worth another try (connection refused or reset, 5xx, throttling, a body cut short).
    Retry(String),
    /// Final (not found, access denied, bad request).
    Fail(StoreError),
}

fn classify(e: azure_core::Error, what: &str) -> Attempt {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            let code = error_code.as_deref().unwrap_or("");
            match *status {
                StatusCode::NotFound if code == "ContainerNotFound" => {
                    Attempt::Fail(StoreError::io(format!(
                        "{what}: the container does not exist (create it, or check --model-repo)"
                    )))
                }
                StatusCode::NotFound => {
                    Attempt::Fail(StoreError::NotFound(format!("{what} not found")))
                }
                StatusCode::Forbidden | StatusCode::Unauthorized => {
                    Attempt::Fail(StoreError::io(format!(
                        "access denied to {what} (HTTP {} {code}): check the storage credentials",
                        u16::from(*status)
                    )))
                }
                StatusCode::PreconditionFailed => Attempt::Fail(StoreError::io(format!(
                    "{what} changed while it was being read; try again"
                ))),
                s if code == "FeatureNotSupported" => Attempt::Fail(StoreError::io(format!(
                    "{what}: the storage does not support this request (HTTP {})",
                    u16::from(s)
                ))),
                s if u16::from(s) >= 500
                    || s == StatusCode::RequestTimeout
                    || s == StatusCode::TooManyRequests =>
                {
                    Attempt::Retry(format!("HTTP {} {code}", u16::from(s)))
                }
                s => Attempt::Fail(StoreError::io(format!(
                    "{what}: HTTP {} {code}",
                    u16::from(s)
                ))),
            }
        }
        ErrorKind::Credential => Attempt::Fail(StoreError::io(format!(
            "cannot get a token for {what}: {}",
            error_chain(&e)
        ))),
        ErrorKind::DataConversion => {
            Attempt::Fail(StoreError::io(format!("{what}: {}", error_chain(&e))))
        }
        _ => Attempt::Retry(error_chain(&e)),
    }
}

/// An error and its causes on one line (the SDK's top-level message is often generic).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    redact_signatures(&text)
}

/// `text` with the value of every `sig` query parameter (a SAS token's signature, its secret
/// part) replaced by `***`: the HTTP client's errors quote the request's URL.
fn redact_signatures(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        let (before, after) = rest.split_at(at + "sig=".len());
        redacted.push_str(before);
        if before[..at].ends_with(['?', '&']) {
            let end = after
                .find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace())
                .unwrap_or(after.len());
            redacted.push_str("***");
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    redacted.push_str(rest);
    redacted
}

/// The retry policy: [`ATTEMPTS`] tries, each bounded by [`REQUEST_TIMEOUT`], backing off
/// from 200 ms; only [`Attempt::Retry`] failures are tried again.
struct Retries<'a> {
    what: &'a str,
    attempt: u32,
    backoff: Duration,
}

impl<'a> Retries<'a> {
    fn new(what: &'a str) -> Self {
        Self {
            what,
            attempt: 0,
            backoff: Duration::from_millis(200),
        }
    }

    /// Runs one try of `request`: its value, or `None` once it is worth another try.
    async fn run<T>(
        &mut self,
        request: impl Future<Output = Result<T, Attempt>>,
    ) -> Result<Option<T>, StoreError> {
        self.attempt += 1;
        let why = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(value)) => return Ok(Some(value)),
            Ok(Err(Attempt::Fail(e))) => return Err(e),
            Ok(Err(Attempt::Retry(why))) => why,
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        if self.attempt == ATTEMPTS {
            return Err(StoreError::io(format!(
                "{}: gave up after {ATTEMPTS} attempts: {why}",
                self.what
            )));
        }
        tracing::warn!(what = self.what, attempt = self.attempt, error = %why, "blob request failed; retrying");
        metrics::counter!(crate::telemetry::metrics::STORE_RETRIES).increment(1);
        tokio::time::sleep(self.backoff).await;
        self.backoff *= 2;
        Ok(None)
    }
}

/// Runs `request` under the [`Retries`] policy.
async fn retry<T, F, Fut>(what: &str, mut request: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let mut retries = Retries::new(what);
    loop {
        if let Some(value) = retries.run(request()).await? {
            return Ok(value);
        }
    }
}

/// Streams a response body into `buf`, which it must fill exactly; a body cut short (or a
/// connection lost midway) is worth another try.
async fn fill(mut body: azure_core::ResponseBody, buf: &mut [u8]) -> Result<(), Attempt> {
    let mut filled = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Attempt::Retry(error_chain(&e)))?;
        let end = filled + chunk.len();
        let Some(slot) = buf.get_mut(filled..end) else {
            return Err(Attempt::Retry(format!(
                "body longer than {} bytes",
                buf.len()
            )));
        };
        slot.copy_from_slice(&chunk);
        filled = end;
    }
    if filled < buf.len() {
        return Err(Attempt::Retry(format!(
            "body cut short: {filled} of {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

/// A whole response body; a connection lost midway is worth another try.
async fn collect(body: azure_core::ResponseBody) -> Result<Bytes, Attempt> {
    body.collect()
        .await
        .map_err(|e| Attempt::Retry(error_chain(&e)))
}

#[async_trait]
impl ModelStore for BlobStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let blob = self.blob(key);
        let what = self.name(&blob);
        // The first read tells the ETag and whether more follows; small objects (manifests,
        // aliases) need nothing more. It is kept short so the parallel reads start early.
        let first = retry(&what, || async {
            // A chunk size (not a range) so that the SDK tells whether more follows.
            let response = blob
                .get()
                .chunk_size(FIRST_READ as u64)
                .into_stream()
                .next()
                .await
                .ok_or_else(|| Attempt::Retry("no response".into()))?;
            match response {
                Ok(response) => {
                    let etag = response.blob.properties.etag.to_string();
                    let more = response.remaining_range.is_some();
                    let head = collect(response.data).await?;
                    Ok(Some((head, etag, more)))
                }
                // A range read of an empty blob.
                Err(e)
                    if e.as_http_error().map(|h| h.status())
                        == Some(StatusCode::RequestedRangeNotSatisfiable) =>
                {
                    Ok(None)
                }
                Err(e) => Err(classify(e, &what)),
            }
        })
        .await?;
        let Some((head, etag, more)) = first else {
            return Ok(Bytes::new());
        };
        if !more {
            metrics::counter!(crate::telemetry::metrics::DOWNLOAD_BYTES)
                .increment(head.len() as u64);
            return Ok(head);
        }
        let properties = retry(&what, || async {
            blob.get_properties()
                .if_match(IfMatchCondition::Match(etag.clone()))
                .await
                .map_err(|e| classify(e, &what))
        })
        .await?;
        let total = usize::try_from(properties.blob.properties.content_length)
            .map_err(|_| StoreError::io(format!("{what} is too large")))?;
        let mut buf = vec![0u8; total];
        let (head_part, rest) = buf.split_at_mut(head.len());
        head_part.copy_from_slice(&head);
        let mut ranges = Vec::new();
        for (i, chunk) in rest.chunks_mut(BLOCK_SIZE).enumerate() {
            let start = head.len() + i * BLOCK_SIZE;
            ranges.push(self.read_range(&blob, &etag, (start, total), chunk));
        }
        futures::stream::iter(ranges)
            .buffer_unordered(PARALLEL)
            .try_collect::<()>()
            .await?;
        metrics::counter!(crate::telemetry::metrics::DOWNLOAD_BYTES).increment(total as u64);
        Ok(Bytes::from(buf))
    }

    async fn get_if_changed(
        &self,
        key: &str,
        known: Option<&str>,
    ) -> Result<Option<Tagged>, StoreError> {
        let blob = self.blob(key);
        let what = self.name(&blob);
        retry(&what, || async {
            let mut get = blob.get();
            if let Some(tag) = known {
                get = get.if_match(IfMatchCondition::NotMatch(tag.to_owned()));
            }
            match get.into_stream().next().await {
                None => Err(Attempt::Retry("no response".into())),
                Some(Ok(response)) => {
                    let tag = response.blob.properties.etag.to_string();
                    let bytes = collect(response.data).await?;
                    Ok(Some(Tagged { bytes, tag }))
                }
                Some(Err(e))
                    if e.as_http_error().map(|h| h.status()) == Some(StatusCode::NotModified) =>
                {
                    Ok(None)
                }
                Some(Err(e)) => Err(classify(e, &what)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = if prefix.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{prefix}/", self.prefix)
        };
        let what = format!("az://{}/{full}", self.container.container_name());
        let mut names = retry(&what, || async {
            let mut pages = self
                .container
                .list_blobs()
                .prefix(Prefix::from(full.clone()))
                .delimiter("/")
                .into_stream();
            let mut names = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| classify(e, &what))?;
                names.extend(page.blobs.prefixes().filter_map(|p| {
                    let name = p.name.strip_prefix(&full)?.trim_end_matches('/');
                    (!name.is_empty()).then(|| name.to_owned())
                }));
            }
            Ok(names)
        })
        .await?;
        names.sort();
        Ok(names)
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.create_if_missing().await;
        let blob = self.blob(key);
        let what = self.name(&blob);
        if bytes.len() <= BLOCK_SIZE {
            return retry(&what, || async {
                blob.put_block_blob(bytes.clone())
                    .await
                    .map(drop)
                    .map_err(|e| classify(e, &what))
            })
            .await;
        }
        // Blocks first (invisible until committed), then the list commits them at once.
        let id = |i: usize| Bytes::from(format!("{i:08}"));
        let blocks = bytes.len().div_ceil(BLOCK_SIZE);
        futures::stream::iter(0..blocks)
            .map(|i| {
                let block = bytes.slice(i * BLOCK_SIZE..((i + 1) * BLOCK_SIZE).min(bytes.len()));
                let (blob, what) = (&blob, &what);
                async move {
                    retry(what, || async {
                        blob.put_block(id(i), block.clone())
                            .await
                            .map(drop)
                            .map_err(|e| classify(e, what))
                    })
                    .await
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<()>()
            .await?;
        let list = BlockList {
            blocks: (0..blocks)
                .map(|i| BlobBlockType::new_uncommitted(id(i)))
                .collect(),
        };
        retry(&what, || async {
            blob.put_block_list(list.clone())
                .await
                .map(drop)
                .map_err(|e| classify(e, &what))
        })
        .await
    }

    async fn create_if_missing(&self) {
        self.created
            .get_or_init(|| async {
                match self.container.create().await {
                    Ok(_) => tracing::info!(
                        container = self.container.container_name(),
                        "created the container"
                    ),
                    Err(e) => tracing::debug!(error = %e.kind(), "not creating the container"),
                }
            })
            .await;
    }

    fn describe(&self) -> String {
        self.address.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_container_and_prefix() {
        assert_eq!(
            parse_address("az://models").unwrap(),
            ("models".into(), String::new())
        );
        assert_eq!(
            parse_address("az://models/team/a/").unwrap(),
            ("models".into(), "team/a/".into())
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for address in [
            "models",
            "az://",
            "az://Models",
            "az://a",
            "az://bad_name",
            "az://models/../x",
            "az://models/./x",
        ] {
            assert!(
                matches!(parse_address(address), Err(StoreError::Invalid(_))),
                "{address}"
            );
        }
    }

    #[test]
    fn sas_signatures_in_quoted_urls_are_hidden() {
        let quoted = "error sending request for url (http://h/c?restype=container&sv=2024&sig=a%2Bb=&se=1): \
                      refused; see https://h/c?sig=zz and Prefix=design=x";
        assert_eq!(
            redact_signatures(quoted),
            "error sending request for url (http://h/c?restype=container&sv=2024&sig=***&se=1): \
             refused; see https://h/c?sig=*** and Prefix=design=x"
        );
    }

    #[test]
    fn credentials_are_never_shown() {
        let auth = BlobAuth {
            connection_string: Some("AccountName=a;AccountKey=c2VjcmV0".into()),
            key: Some("c2VjcmV0".into()),
            sas_token: Some("sig=secret".into()),
            ..BlobAuth::default()
        };
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("secret"),
            "{shown}"
        );
        let malformed = BlobAuth {
            connection_string: Some("AccountKey=c2VjcmV0;nonsense".into()),
            ..BlobAuth::default()
        };
        let error = BlobStore::open("az://models", &malformed).err().unwrap();
        assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_base64_is_named_as_such() {
        let mistyped = "c2VjcmV0=x";
        let by_key = BlobAuth {
            account: Some("a".into()),
            key: Some(mistyped.into()),
            ..BlobAuth::default()
        };
        let in_string = BlobAuth {
            connection_string: Some(format!("AccountName=a;AccountKey={mistyped}").into()),
            ..BlobAuth::default()
        };
        for (auth, from) in [(by_key, "AZURE_STORAGE_KEY"), (in_string, "AccountKey")] {
            let error = BlobStore::open("az://models", &auth)
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("is not valid base64"), "{error}");
            assert!(error.contains(from), "{error}");
            assert!(!error.contains(mistyped), "{error}");
        }
    }

    #[test]
    fn connection_strings_map_to_their_endpoints() {
        let endpoint = |connection_string: &str| {
            let auth = BlobAuth {
                connection_string: Some(connection_string.into()),
                ..BlobAuth::default()
            };
            let (location, _) = connect_with(&auth).unwrap();
            let url = location
                .url(azure_storage::clients::ServiceType::Blob)
                .unwrap();
            (location.account().to_owned(), url.to_string())
        };
        assert_eq!(
            endpoint("UseDevelopmentStorage=true"),
            (
                "devstoreaccount1".into(),
                "http://127.0.0.1:10000/devstoreaccount1".into()
            )
        );
        assert_eq!(
            endpoint(
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"
            ),
            ("acct".into(), "https://acct.blob.core.windows.net/".into())
        );
        assert_eq!(
            endpoint("AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn"),
            (
                "acct".into(),
                "https://acct.blob.core.chinacloudapi.cn/".into()
            )
        );
        assert_eq!(
            endpoint(
                "AccountName=acct;SharedAccessSignature=sv=1&sig=x;BlobEndpoint=http://h:1/acct/"
            ),
            ("acct".into(), "http://h:1/acct".into())
        );
    }

    #[test]
    fn needs_some_credentials() {
        let error = BlobStore::open("az://models", &BlobAuth::default())
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .contains("AZURE_STORAGE_CONNECTION_STRING")
        );
    }
}
