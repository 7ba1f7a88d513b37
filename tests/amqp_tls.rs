//! AMQP over TLS against a real RabbitMQ node that offers only `amqps://`, with a CA made for
//! the test: a worker and its clients trust it through `--amqp-ca-file` and serve over TLS; a
//! broker they cannot verify is refused, with an error that says why and hides the password.

mod common;

use common::load::{Answers, publish_at, worker_command};
use common::rabbit_node::RabbitNode;
use common::{output_text, repo_with, unique_model};
use ember::transport::Transport;
use ember::transport::amqp::{AmqpConfig, AmqpTransport};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_over_tls_with_the_brokers_ca() {
    let node = RabbitNode::tls_only();
    let (_, certificates) = node.tls.as_ref().unwrap();
    let url = node.tls_url("localhost");
    let transport = AmqpTransport::connect(AmqpConfig {
        ca_file: Some(certificates.ca.clone()),
        ..AmqpConfig::new(&url)
    })
    .await
    .expect("the test's client connects over TLS");
    let model = unique_model("tls");
    let repo = repo_with(&[&model]);
    transport.declare(&model).await.unwrap();
    let mut worker = common::KillOnDrop(
        worker_command(repo.path(), &model, &url)
            .env("EMBER_AMQP_CA_FILE", &certificates.ca)
            .spawn()
            .unwrap(),
    );
    let mut answers = Answers::open(&transport, &model).await;
    publish_at(&transport, &model, 0..500, None).await;
    answers.until(500, Duration::from_secs(60)).await;
    assert_eq!(answers.duplicates(), 0);

    // The node has no plain listener; still, check what it says of each connection.
    let connections = node
        .ctl(&[
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "ssl",
            "ssl_protocol",
            "client_properties",
        ])
        .unwrap();
    let worker_name = format!("\"ember-{}\"", worker.0.id());
    assert!(
        connections.contains(&worker_name),
        "the worker's connection in {connections}"
    );
    for line in connections.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[0], "true", "a TLS connection: {line}");
        assert!(fields[1].starts_with("tlsv1."), "{line}");
    }
    println!("{} connections, all over TLS", connections.lines().count());
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker serves on"
    );
    answers.results.stop().await;
}

#[test]
fn a_broker_that_cannot_be_verified_is_refused_clearly() {
    let node = RabbitNode::tls_only();
    let (port, certificates) = node.tls.as_ref().unwrap();
    let password = "tls-s3cret-Pa55";
    node.ctl(&["add_user", "ember-tls", password]).unwrap();
    node.ctl(&["set_permissions", "ember-tls", ".*", ".*", ".*"])
        .unwrap();
    let url =
        |scheme: &str, host: &str| format!("{scheme}://ember-tls:{password}@{host}:{port}/%2f");
    let declare = |url: &str, ca: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
        command
            .args(["queues", "declare", "--model", "digits"])
            .env("EMBER_AMQP_URL", url)
            .env("EMBER_LOG", "trace");
        if let Some(ca) = ca {
            command.env("EMBER_AMQP_CA_FILE", ca);
        }
        let output = command.output().unwrap();
        let text = output_text(&output);
        assert!(
            !output.status.success(),
            "{url}: must be refused, got {text}"
        );
        assert!(!text.contains(password), "the password leaked: {text}");
        assert!(!text.contains("panicked"), "{text}");
        text
    };

    // With the CA the user's credentials work: the refusals below are about the certificate.
    let trusted = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["queues", "declare", "--model", "digits"])
        .env("EMBER_AMQP_URL", url("amqps", "localhost"))
        .env("EMBER_AMQP_CA_FILE", &certificates.ca)
        .output()
        .unwrap();
    assert!(trusted.status.success(), "{}", output_text(&trusted));

    // The system's roots do not know the test's CA.
    let unknown = declare(&url("amqps", "localhost"), None);
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");
    // The certificate names localhost, not 127.0.0.1.
    let wrong_name = declare(&url("amqps", "127.0.0.1"), Some(&certificates.ca));
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
    // A CA file that is not there is named.
    let missing = declare(
        &url("amqps", "localhost"),
        Some("/nonexistent/ca.pem".as_ref()),
    );
    assert!(
        missing.contains("cannot read CA file /nonexistent/ca.pem"),
        "{missing}"
    );
    // Plain AMQP to the TLS port: refused, not hanging.
    let plain = declare(&url("amqp", "localhost"), None);
    assert!(plain.contains("cannot connect"), "{plain}");
}
