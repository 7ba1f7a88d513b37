//! The model store over HTTPS, against a real Azurite serving TLS with a certificate from a CA
//! made for the test: trusting that CA (`EMBER_STORAGE_CA_FILE`), `ember` pushes, lists and
//! pulls a model; without it, the endpoint is refused with an error that says why. The
//! Azurite comes from `EMBER_AZURITE_BLOB` (set by `.ci/run`), else `azurite-blob` on PATH.

mod common;

use azure_core::TransportOptions;
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::prelude::ClientBuilder;
use common::tls::Certificates;
use common::{AZURITE_KEY, KillOnDrop, free_port, output_text};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An Azurite of the test's own, serving blobs over HTTPS only.
struct HttpsAzurite {
    dir: tempfile::TempDir,
    certificates: Certificates,
    port: u16,
    _process: KillOnDrop,
}

impl HttpsAzurite {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certificates = Certificates::for_localhost(dir.path());
        let port = free_port();
        let program = std::env::var("EMBER_AZURITE_BLOB").unwrap_or_else(|_| "azurite-blob".into());
        let log = std::fs::File::create(dir.path().join("azurite.log")).unwrap();
        let process = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .arg("--cert")
            .arg(&certificates.server)
            .arg("--key")
            .arg(&certificates.key)
            .arg("--skipApiVersionCheck")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (set EMBER_AZURITE_BLOB; bash .ci/run installs Azurite)")
            });
        let process = KillOnDrop(process);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite over HTTPS did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            dir,
            certificates,
            port,
            _process: process,
        }
    }

    /// A connection string for `https://<host>:<port>`.
    fn connection_string(&self, host: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
             BlobEndpoint=https://{host}:{}/devstoreaccount1;",
            self.port
        )
    }

    /// Creates `container`, trusting the test's CA.
    async fn create(&self, container: &str) {
        let ca = std::fs::read(&self.certificates.ca).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let location = CloudLocation::Custom {
            account: "devstoreaccount1".into(),
            uri: format!("https://localhost:{}/devstoreaccount1", self.port),
        };
        ClientBuilder::with_location(location, StorageCredentials::emulator())
            .transport(TransportOptions::new(Arc::new(client)))
            .container_client(container)
            .create()
            .await
            .unwrap();
    }

    /// `ember args...` against the repository `az://models/repo` on this Azurite, reached as
    /// `host`, trusting `ca` if given.
    fn ember(&self, host: &str, ca: Option<&std::path::Path>, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
        command
            .args(args)
            .env("EMBER_MODEL_REPO", "az://models/repo")
            .env(
                "AZURE_STORAGE_CONNECTION_STRING",
                self.connection_string(host),
            )
            .env("EMBER_CACHE_DIR", self.dir.path().join("cache"))
            .env("EMBER_LOG", "debug")
            .stdout(Stdio::piped());
        if let Some(ca) = ca {
            command.env("EMBER_STORAGE_CA_FILE", ca);
        }
        command.output().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_travel_over_https_to_a_store_with_its_own_ca() {
    let azurite = HttpsAzurite::start();
    azurite.create("models").await;
    let ca = Some(azurite.certificates.ca.as_path());
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/models/digits/1");

    let pushed = azurite.ember("localhost", ca, &["models", "push", shipped]);
    assert!(pushed.status.success(), "{}", output_text(&pushed));
    let listed = azurite.ember("localhost", ca, &["models", "list", "--json"]);
    assert!(listed.status.success(), "{}", output_text(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"digits\""));
    // Fetched over TLS, verified against its sha256 and loaded.
    let pulled = azurite.ember("localhost", ca, &["models", "pull", "digits:1", "--json"]);
    assert!(pulled.status.success(), "{}", output_text(&pulled));

    let refused = |output: &Output, why: &str| {
        let text = output_text(output);
        assert!(!output.status.success(), "must be refused: {text}");
        assert!(text.contains(why), "the error says {why}: {text}");
        assert!(!text.contains(AZURITE_KEY), "the key leaked: {text}");
        assert!(!text.contains("panicked"), "{text}");
    };
    // The bundled public roots do not know the test's CA.
    let list = ["models", "list"];
    refused(&azurite.ember("localhost", None, &list), "UnknownIssuer");
    // The certificate names localhost, not 127.0.0.1.
    refused(&azurite.ember("127.0.0.1", ca, &list), "not valid for name");
    // A CA file that is not there, or holds no certificate, is named.
    let missing = std::path::Path::new("/nonexistent/ca.pem");
    refused(
        &azurite.ember("localhost", Some(missing), &list),
        "storage CA file /nonexistent/ca.pem",
    );
    let not_pem = azurite.dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    refused(
        &azurite.ember("localhost", Some(&not_pem), &list),
        "no PEM certificate",
    );
}
