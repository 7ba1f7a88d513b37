//! No secret reaches what Ember prints or exposes. Every subcommand runs, and prints its help,
//! with secret-bearing environment variables and URLs at `trace` log level: against a broker
//! and a blob store that refuse those credentials, against a Service Bus namespace that is not
//! there, and, for `serve` and `infer`, against a RabbitMQ user whose password is a secret.
//! Neither output, error messages, `serve`'s logged configuration nor the metrics hold any of
//! the secrets.

mod common;

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BROKER_PASSWORD: &str = "brokerpw7f3c";
/// Base64, as Azure account keys are (decodes to `StorageKeyStorageKey...`).
const STORAGE_KEY: &str = "U3RvcmFnZUtleVN0b3JhZ2VLZXlTdG9yYWdlS2V5U3Rv";
const SAS_SIGNATURE: &str = "sassig9d1e";
const BUS_KEY: &str = "buskey2b8a";
const SECRETS: [&str; 4] = [BROKER_PASSWORD, STORAGE_KEY, SAS_SIGNATURE, BUS_KEY];

/// The RabbitMQ user the connected runs use: its password is a secret too.
const SECRET_USER: &str = "ember-secrets";
const SECRET_USER_PASSWORD: &str = "userpw5a0d";

fn ember(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "EMBER_AMQP_URL",
            format!("amqp://ember:{BROKER_PASSWORD}@127.0.0.1:5672/%2f"),
        )
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            common::azurite_via("http://127.0.0.1:10000", STORAGE_KEY),
        )
        .env(
            "EMBER_SERVICEBUS_CONNECTION_STRING",
            format!(
                "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=ember;SharedAccessKey={BUS_KEY}"
            ),
        )
        .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
        .env("EMBER_DRAIN_TIMEOUT", "1s")
        .env("EMBER_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    command
}

/// Runs `command` for at most `limit` (then kills it) and returns all it printed.
fn printed_by(mut command: Command, limit: Duration) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let readers = [
        read_all(child.stdout.take().unwrap()),
        read_all(child.stderr.take().unwrap()),
    ];
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    readers.map(|r| r.join().unwrap()).concat()
}

fn read_all(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(pipe), &mut text);
        text
    })
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS.iter().chain([&SECRET_USER_PASSWORD]) {
        assert!(
            !text.contains(secret),
            "{what} printed a secret ({secret}):\n{text}"
        );
    }
}

#[test]
fn help_of_every_subcommand_hides_secret_environment_values() {
    let subcommands: &[&[&str]] = &[
        &[],
        &["demo"],
        &["infer"],
        &["send"],
        &["gateway"],
        &["batch", "submit"],
        &["train"],
        &["serve"],
        &["models", "list"],
        &["models", "push"],
        &["models", "promote"],
        &["models", "import"],
        &["models", "pull"],
        &["queues", "declare"],
    ];
    for subcommand in subcommands {
        let mut args = subcommand.to_vec();
        args.push("--help");
        let mut command = ember(&args);
        command.env(
            "AZURE_STORAGE_SAS_TOKEN",
            format!("sv=2024&sig={SAS_SIGNATURE}"),
        );
        let text = printed_by(command, Duration::from_secs(30));
        assert!(text.contains("Usage"), "{args:?}: {text}");
        assert_no_secret(&format!("{args:?}"), &text);
    }
}

#[test]
fn refused_credentials_fail_every_subcommand_without_printing_them() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("request.json");
    let data = common::held_out();
    std::fs::write(&request, common::image_request("r", data.image(0), 1)).unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        [std::fs::read(&request).unwrap(), b"\n".to_vec()].concat(),
    )
    .unwrap();
    let output = dir.path().join("answers.jsonl");
    let (request, requests, output) = (
        request.to_str().unwrap(),
        requests.to_str().unwrap(),
        output.to_str().unwrap(),
    );
    let repo = "az://ember-secrets/models";
    let runs: &[&[&str]] = &[
        &["serve", "--transport", "amqp", "--model", "digits"],
        &["serve", "--transport", "servicebus", "--model", "digits"],
        &[
            "serve",
            "--transport",
            "memory",
            "--model",
            "digits",
            "--model-repo",
            repo,
        ],
        &[
            "infer",
            "--transport",
            "amqp",
            "--model",
            "digits",
            "--input",
            request,
        ],
        &[
            "infer",
            "--transport",
            "servicebus",
            "--model",
            "digits",
            "--input",
            request,
        ],
        &[
            "send",
            "--transport",
            "amqp",
            "--model",
            "digits",
            "--input",
            request,
        ],
        &[
            "send",
            "--transport",
            "servicebus",
            "--model",
            "digits",
            "--input",
            request,
        ],
        &["gateway", "--transport", "amqp", "--listen", "127.0.0.1:0"],
        &[
            "batch", "submit", "--model", "digits", "--input", requests, "--output", output,
        ],
        &["queues", "declare", "digits"],
        &["queues", "declare", "digits", "--transport", "servicebus"],
        &["models", "list", "--model-repo", repo],
        &["models", "pull", "digits", "--model-repo", repo],
        &["models", "push", "models/digits/1", "--model-repo", repo],
        &["models", "promote", "digits", "1", "--model-repo", repo],
        &["train", "digits", "--epochs", "1", "--out", repo],
    ];
    for args in runs {
        let text = printed_by(ember(args), Duration::from_secs(20));
        assert_no_secret(&format!("{args:?}"), &text);
        // Ember says what failed; lapin's own lines would only repeat it before.
        assert!(!text.contains("lapin"), "{args:?}: {text}");
        if args[0] == "serve" {
            // The configuration is logged, every secret-bearing flag in it redacted.
            assert!(text.contains("effective configuration"), "{args:?}: {text}");
            assert!(
                text.contains("amqp://ember:***@127.0.0.1"),
                "{args:?}: {text}"
            );
        }
    }
    // Broker URLs a parser chokes on, or whose password breaks the URL's structure.
    for url in [
        format!("amqp:ember:{BROKER_PASSWORD}@127.0.0.1"),
        format!("amqp://ember:{BROKER_PASSWORD}/x@127.0.0.1:5672/%2f"),
        format!("amqp://ember:{BROKER_PASSWORD}@127.0.0.1:notaport/%2f"),
    ] {
        let mut command = ember(&["queues", "declare", "digits"]);
        command.env("EMBER_AMQP_URL", &url);
        let text = printed_by(command, Duration::from_secs(20));
        assert!(!text.is_empty(), "{url}: an error is printed");
        assert_no_secret("a malformed broker URL", &text);
    }
    // The other ways to sign in to Blob Storage: an account key, a SAS token.
    let sas = format!("sv=2024&sig={SAS_SIGNATURE}");
    let list_with = |endpoint: &str, variable: &str, value: &str| {
        let mut command = ember(&["models", "list", "--model-repo", repo]);
        command
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
            .env("AZURE_STORAGE_BLOB_ENDPOINT", endpoint)
            .env(variable, value);
        let text = printed_by(command, Duration::from_secs(30));
        assert!(!text.is_empty(), "{variable}: an error is printed");
        assert_no_secret(variable, &text);
        text
    };
    let azurite = "http://127.0.0.1:10000/devstoreaccount1";
    list_with(azurite, "AZURE_STORAGE_KEY", STORAGE_KEY);
    list_with(azurite, "AZURE_STORAGE_SAS_TOKEN", &sas);
    // Storage that does not answer: the HTTP client's error quotes the request's URL, where a
    // SAS token travels.
    let refused = "http://127.0.0.1:1/devstoreaccount1";
    let text = list_with(refused, "AZURE_STORAGE_SAS_TOKEN", &sas);
    assert!(text.contains("sig=***"), "the URL is quoted: {text}");
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_worker_keeps_its_broker_password_out_of_logs_and_metrics() {
    if !rabbitmqctl(&["add_user", SECRET_USER, SECRET_USER_PASSWORD]) {
        assert!(
            rabbitmqctl(&["change_password", SECRET_USER, SECRET_USER_PASSWORD]),
            "rabbitmqctl (the test adds a broker user)"
        );
    }
    assert!(rabbitmqctl(&[
        "set_permissions",
        SECRET_USER,
        ".*",
        ".*",
        ".*"
    ]));
    let url = format!("amqp://{SECRET_USER}:{SECRET_USER_PASSWORD}@127.0.0.1:5672/%2f");
    let model = common::unique_model("secrets");
    let repo = common::repo_with(&[&model]);
    let mut serve = ember(&["serve", "--transport", "amqp", "--model", &model]);
    serve
        .arg("--model-repo")
        .arg(repo.path())
        .env("EMBER_AMQP_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = common::KillOnDrop(serve.spawn().unwrap());
    let (telemetry, logs) = common::follow_logs(&mut child.0);
    // Ready once the model's queues are subscribed: before that `infer` finds no queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{telemetry}/readyz"))
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(Instant::now() < deadline, "not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("request.json");
    let data = common::held_out();
    std::fs::write(&request, common::image_request("r", data.image(0), 1)).unwrap();
    let mut infer = ember(&["infer", "--transport", "amqp", "--model", &model, "--input"]);
    infer.arg(&request).env("EMBER_AMQP_URL", &url);
    let answered = tokio::task::spawn_blocking(move || infer.output().unwrap())
        .await
        .unwrap();
    let infer_text = common::output_text(&answered);
    assert!(answered.status.success(), "{infer_text}");
    assert!(infer_text.contains("\"outputs\""), "{infer_text}");
    assert_no_secret("ember infer", &infer_text);

    let metrics = reqwest::get(format!("{telemetry}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ember_"), "{metrics}");
    assert_no_secret("/metrics", &metrics);

    // Drained by SIGTERM, so the logs include shutting down.
    common::sigterm(&child.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("connected to RabbitMQ"), "{logs}");
    assert_no_secret("ember serve", &logs);
}
