//! Hot reload from an `az://` repository on a real Azurite: a version promoted while requests
//! flow is switched in with no failed request; a promotion that cannot be fetched or verified
//! (bad sha256, storage unreachable) leaves the last good version serving.

mod common;

use common::proxy::FaultProxy;
use common::*;
use ember::batcher::BatchConfig;
use ember::protocol::{Lane, Reply, decode_reply};
use ember::registry::Registry;
use ember::store::{ModelName, ModelStore, Repository, Version};
use ember::transport::memory::MemoryTransport;
use ember::transport::{Message, Properties, Subscription, Transport, queues};
use ember::worker::{Worker, WorkerConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const REPLIES: &str = "test.reload.replies";
const RELOAD: Duration = Duration::from_millis(100);

struct Serving {
    transport: MemoryTransport,
    replies: Box<dyn Subscription>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    sent: usize,
}

impl Serving {
    async fn start(repo: Repository) -> Self {
        let registry = Arc::new(Registry::new(repo, BatchConfig::default()));
        let transport = MemoryTransport::new();
        let config = WorkerConfig {
            reload_interval: RELOAD,
            ..WorkerConfig::for_batch_size(32)
        };
        let worker = Worker::new(Arc::new(transport.clone()), registry.clone(), config);
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { worker.run(&["digits".parse().unwrap()], shutdown).await }
        });
        let replies = transport
            .subscribe(&[REPLIES.to_owned()], 10_000)
            .await
            .unwrap();
        Self {
            transport,
            replies,
            registry,
            shutdown,
            sent: 0,
        }
    }

    async fn send(&mut self, pixels: &[f32]) {
        self.sent += 1;
        let message = request(self.sent, pixels);
        self.transport
            .publish(&queues::requests("digits", Lane::Realtime), message)
            .await
            .unwrap();
    }

    /// The next `n` replies: request id → version that answered (panics on an error reply).
    async fn answers(&mut self, n: usize) -> Vec<(usize, String)> {
        let mut answers = Vec::new();
        for _ in 0..n {
            let reply = tokio::time::timeout(Duration::from_secs(30), self.replies.next())
                .await
                .expect("a reply in time")
                .unwrap();
            reply.settle.ack().await.unwrap();
            match decode_reply(&reply.message.body).unwrap() {
                Reply::Ok(ok) => answers.push((ok.id.parse().unwrap(), ok.model_version)),
                Reply::Err(e) => panic!("request failed: {e:?}"),
            }
        }
        answers
    }

    /// Sends `n` requests and returns the versions that answered them.
    async fn round(&mut self, n: usize, pixels: &[f32]) -> Vec<String> {
        for _ in 0..n {
            self.send(pixels).await;
        }
        self.answers(n).await.into_iter().map(|(_, v)| v).collect()
    }
}

/// Realtime request `id` for one image, answered on [`REPLIES`].
fn request(id: usize, pixels: &[f32]) -> Message {
    Message {
        body: image_request(&id.to_string(), pixels, 1).into(),
        properties: Properties {
            message_id: Some(id.to_string()),
            reply_to: Some(REPLIES.into()),
            ..Properties::default()
        },
    }
}

fn digits() -> ModelName {
    "digits".parse().unwrap()
}

fn version(v: &str) -> Version {
    Version::parse(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_while_requests_flow_switches_versions_with_no_failed_request() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let container = azurite_container("reload").await;
    let options = azurite_options(&azurite_connection_string(), cache.path());
    let address = format!("az://{container}/prod");
    let repo = Repository::open_with(&address, &options).unwrap();
    for v in ["1", "2"] {
        repo.push(&local_version(local.path(), "digits", v, &digits_weights()))
            .await
            .unwrap();
    }
    repo.promote(&digits(), &version("1"), &version("production"))
        .await
        .unwrap();
    let mut serving = Serving::start(Repository::open_with(&address, &options).unwrap()).await;
    let pixels = held_out().pixels[..ember::train::digits::PIXELS].to_vec();

    // A steady stream of requests; production moves to version 2 a third of the way in.
    const REQUESTS: usize = 600;
    let producer = {
        let transport = serving.transport.clone();
        let pixels = pixels.clone();
        tokio::spawn(async move {
            for i in 1..=REQUESTS {
                let message = request(i, &pixels);
                transport
                    .publish(&queues::requests("digits", Lane::Realtime), message)
                    .await
                    .unwrap();
                if i == REQUESTS / 3 {
                    repo.promote(&digits(), &version("2"), &version("production"))
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let answers: HashMap<usize, String> = serving.answers(REQUESTS).await.into_iter().collect();
    producer.await.unwrap();
    serving.sent = REQUESTS;

    assert_eq!(
        answers.len(),
        REQUESTS,
        "every request answered once, none failed"
    );
    assert_eq!(answers[&1], "1");
    assert_eq!(answers[&REQUESTS], "2");
    let first_v2 = (1..=REQUESTS).find(|i| answers[i] == "2").unwrap();
    assert!(first_v2 > REQUESTS / 3, "switched only after the promotion");
    let late_v1 = (first_v2..=REQUESTS).filter(|i| answers[i] == "1").count();
    assert!(
        late_v1 <= 64,
        "after the switch only requests already queued finish on the old version ({late_v1})"
    );
    serving.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_unreachable_promotion_keeps_the_last_good_version_serving() {
    let (local, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let container = azurite_container("keep").await;
    let address = format!("az://{container}");
    let direct = azurite_options(&azurite_connection_string(), cache.path());
    let repo = Repository::open_with(&address, &direct).unwrap();
    let raw = ember::store::BlobStore::open(&address, &direct.blob).unwrap();
    for v in ["1", "2", "3"] {
        repo.push(&local_version(local.path(), "digits", v, &digits_weights()))
            .await
            .unwrap();
    }
    repo.promote(&digits(), &version("1"), &version("production"))
        .await
        .unwrap();
    // The worker reaches the storage through a proxy that can take it away.
    let proxy = FaultProxy::start("127.0.0.1:10000").await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let worker_cache = tempfile::tempdir().unwrap();
    let via_proxy = azurite_options(&azurite_via(&endpoint, AZURITE_KEY), worker_cache.path());
    let mut serving = Serving::start(Repository::open_with(&address, &via_proxy).unwrap()).await;
    let pixels = held_out().pixels[..ember::train::digits::PIXELS].to_vec();
    assert!(serving.round(5, &pixels).await.iter().all(|v| v == "1"));

    // Version 2's weights do not match its manifest (tampered; the manifest names other
    // weights, so no cache can stand in): refused, 1 keeps serving.
    let tampered = local_version(local.path(), "digits", "2", b"other weights");
    raw.put(
        "digits/2/manifest.json",
        std::fs::read(tampered.join("manifest.json"))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    repo.promote(&digits(), &version("2"), &version("production"))
        .await
        .unwrap();
    assert_eq!(serving.registry.refresh().await, vec![]);
    tokio::time::sleep(3 * RELOAD).await;
    assert!(serving.round(20, &pixels).await.iter().all(|v| v == "1"));

    // Storage unreachable while version 3 is promoted: 1 keeps serving...
    proxy.down();
    repo.promote(&digits(), &version("3"), &version("production"))
        .await
        .unwrap();
    assert_eq!(serving.registry.refresh().await, vec![]);
    assert!(serving.round(20, &pixels).await.iter().all(|v| v == "1"));

    // ...and once it is back, the next poll switches to 3.
    proxy.up();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while serving.registry.served() != vec![("digits".to_owned(), "3".to_owned())] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never switched to 3"
        );
        tokio::time::sleep(RELOAD).await;
    }
    assert!(serving.round(20, &pixels).await.iter().all(|v| v == "3"));
    serving.shutdown.cancel();
}
