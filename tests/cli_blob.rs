//! `ember models push|promote|list|pull` and serving from `az://`, as users run them against a
//! real Azurite; secrets never appear in what the binary prints.

mod common;

use common::*;
use std::process::{Command, Output};

fn ember(args: &[&str], storage: &str, cache: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AZURE_STORAGE_CONNECTION_STRING", storage)
        .env("EMBER_CACHE_DIR", cache)
        .env("EMBER_LOG", "info")
        .output()
        .expect("ember runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn last_json(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

#[tokio::test]
async fn models_are_pushed_promoted_listed_pulled_and_served_from_blob() {
    let container = azurite_container("cli").await;
    let repo = format!("az://{container}/models");
    let cache = tempfile::tempdir().unwrap();
    let storage = azurite_via("http://127.0.0.1:10000", AZURITE_KEY);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--model-repo", &repo]);
        let output = ember(&all, &storage, cache.path());
        assert!(!text(&output).contains(AZURITE_KEY), "{}", text(&output));
        output
    };

    let pushed = run(&["models", "push", "models/digits/1"]);
    assert!(pushed.status.success(), "{}", text(&pushed));
    assert!(text(&pushed).contains("pushed digits version 1"));
    let promoted = run(&["models", "promote", "digits", "1"]);
    assert!(promoted.status.success(), "{}", text(&promoted));

    let listed = run(&["models", "list", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["model"], "digits");
    assert_eq!(rows[0]["version"], "1");
    assert_eq!(rows[0]["aliases"][0], "production");

    let cold = run(&["models", "pull", "digits", "--json"]);
    assert!(cold.status.success(), "{}", text(&cold));
    let report = last_json(&cold);
    assert_eq!(report["cache_hit"], false);
    assert_eq!(report["version"], "1");
    assert!(report["bytes"].as_u64().unwrap() > 0);
    for key in ["download_s", "verify_s", "load_s"] {
        assert!(report[key].as_f64().unwrap() >= 0.0, "{key}: {report}");
    }
    let warm = run(&["models", "pull", "digits:production", "--json"]);
    assert_eq!(last_json(&warm)["cache_hit"], true, "{}", text(&warm));

    // Served from az:// by an in-process worker.
    let request = std::env::temp_dir().join(format!("{container}.json"));
    let pixels: Vec<String> = held_out().image(0).iter().map(|p| p.to_string()).collect();
    std::fs::write(
        &request,
        format!(
            r#"{{"id":"blob","inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
            pixels.join(",")
        ),
    )
    .unwrap();
    let answered = run(&[
        "infer",
        "--transport",
        "memory",
        "--model",
        "digits",
        "--input",
        request.to_str().unwrap(),
    ]);
    assert!(answered.status.success(), "{}", text(&answered));
    assert!(
        text(&answered).contains(r#""model_version":"1""#),
        "{}",
        text(&answered)
    );

    // Bad input: an unknown version, a missing container.
    let missing = run(&["models", "pull", "digits:9"]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("digits"), "{}", text(&missing));
    let output = ember(
        &[
            "models",
            "list",
            "--model-repo",
            "az://no-such-container-cli",
        ],
        &storage,
        cache.path(),
    );
    assert!(!output.status.success());
    assert!(
        text(&output).contains("does not exist"),
        "{}",
        text(&output)
    );
}

#[test]
fn the_first_push_creates_the_container() {
    let container = unique_model("cli-new").replace('_', "-");
    let repo = format!("az://{container}/models");
    let cache = tempfile::tempdir().unwrap();
    let storage = azurite_via("http://127.0.0.1:10000", AZURITE_KEY);
    let run = |args: &[&str]| ember(args, &storage, cache.path());
    let listed = run(&["models", "list", "--model-repo", &repo]);
    assert!(
        text(&listed).contains("does not exist"),
        "{}",
        text(&listed)
    );
    let pushed = run(&["models", "push", "models/digits/1", "--model-repo", &repo]);
    assert!(pushed.status.success(), "{}", text(&pushed));
    let listed = run(&["models", "list", "--json", "--model-repo", &repo]);
    assert!(listed.status.success(), "{}", text(&listed));
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["model"], "digits", "{}", text(&listed));
}

#[tokio::test]
async fn a_wrong_key_fails_clearly_without_printing_it() {
    let container = azurite_container("cli-auth").await;
    let cache = tempfile::tempdir().unwrap();
    let wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let storage = azurite_via("http://127.0.0.1:10000", wrong);
    let repo = format!("az://{container}");
    for args in [
        vec!["models", "list", "--model-repo", &repo],
        vec!["models", "pull", "digits", "--model-repo", &repo],
        vec!["models", "push", "models/digits/1", "--model-repo", &repo],
    ] {
        let output = ember(&args, &storage, cache.path());
        assert!(!output.status.success(), "{args:?}");
        let all = text(&output);
        assert!(all.contains("access denied"), "{args:?}: {all}");
        assert!(!all.contains(wrong), "{args:?} printed the key: {all}");
    }
}
