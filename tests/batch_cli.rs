//! `ember batch submit` against a real RabbitMQ and a worker in this process: answers in input
//! order with errors counted, and a run killed with SIGKILL continued by the same command with
//! every answer exactly once.

mod common;

use common::{KillOnDrop, LocalWorker, broker, held_out, image_request, output_text};
use ember::results::ClaimChecks;
use ember::store::{BlobAuth, open_store};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `lines` digit requests with ids `r-<k>`; `bad` lines are replaced by a request with no rows.
fn write_requests(path: &Path, lines: usize, bad: &[usize]) {
    let data = held_out();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for k in 0..lines {
        if bad.contains(&k) {
            writeln!(file, r#"{{"id":"r-{k}","inputs":[]}}"#).unwrap();
        } else {
            let body = image_request(&format!("r-{k}"), data.image(k % data.labels.len()), 1);
            file.write_all(&body).unwrap();
            file.write_all(b"\n").unwrap();
        }
        if k == 7 {
            file.write_all(b"\n  \n").unwrap(); // blank lines are not requests
        }
    }
}

fn submit(model: &str, input: &Path, output: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args([
            "batch", "submit", "--quiet", "--json", "--model", model, "--input",
        ])
        .arg(input)
        .arg("--output")
        .arg(output)
        .env("EMBER_AMQP_URL", common::amqp_url());
    command
}

/// Runs `command` to the end, failing if it takes longer than `limit` (a stalled job).
fn output_within(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn summary(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", output_text(output)))
}

/// The `id` of each line of `path`.
fn answer_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let answer: serde_json::Value = serde_json::from_str(line).unwrap();
            answer["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Answers written so far by a running `ember batch submit`, as its state file says (0 before
/// it has one).
fn written_so_far(state: &Path) -> u64 {
    std::fs::read(state)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|s| s["written"].as_u64())
        .unwrap_or(0)
}

/// Checks that `path` answers requests `r-0` to `r-<lines - 1>`, each once, in order.
fn assert_answers_in_order(path: &Path, lines: usize) {
    let ids = answer_ids(path);
    let expected = (0..lines).map(|k| format!("r-{k}"));
    if let Some((line, (got, want))) = ids
        .iter()
        .zip(expected)
        .enumerate()
        .find(|(_, (g, w))| *g != w)
    {
        panic!("line {}: {got}, expected {want}", line + 1);
    }
    assert_eq!(ids.len(), lines, "answers");
}

#[test]
fn a_job_for_a_model_nobody_serves_fails_and_leaves_nothing_behind() {
    let model = common::unique_model("nobody");
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    write_requests(&input, 20, &[]);
    let run = output_within(submit(&model, &input, &output), Duration::from_secs(60));
    let text = output_text(&run);
    assert_eq!(run.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("no worker serves {model}")),
        "{text}"
    );
    assert!(
        !text.contains("lapin"),
        "no library noise before it: {text}"
    );
    assert!(!output.exists(), "the output is removed: {text}");
    let state = dir.path().join("out.jsonl.ember-batch");
    assert!(!state.exists(), "the state is removed: {text}");
    let queues = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--quiet"])
        .output()
        .expect("rabbitmqctl");
    let queues = String::from_utf8_lossy(&queues.stdout);
    assert!(
        !queues.contains(&format!("ember.{model}.")),
        "the job's queue is deleted: {queues}"
    );
    // Nothing to continue: the same command fails the same way, not over leftovers.
    let again = output_within(submit(&model, &input, &output), Duration::from_secs(60));
    assert!(output_text(&again).contains(&format!("no worker serves {model}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_in_input_order_and_errors_are_counted() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "batch-cli").await;
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    write_requests(&input, 300, &[100, 299]);

    // A window far smaller than the requests awaiting their confirm at once (256).
    let mut small_window = submit(&worker.model, &input, &output);
    small_window.args(["--window", "8"]);
    let run = output_within(small_window, Duration::from_secs(120));
    assert_eq!(
        run.status.code(),
        Some(1),
        "errors make it fail: {}",
        output_text(&run)
    );
    let report = summary(&run);
    assert_eq!(report["requests"], 300);
    assert_eq!(report["written"], 300);
    assert_eq!(report["errors"], 2);
    assert!(
        report["first_errors"][0]
            .as_str()
            .unwrap()
            .starts_with("line 101: INVALID_ARGUMENT"),
        "{report}"
    );
    assert_answers_in_order(&output, 300);
    let answers = std::fs::read_to_string(&output).unwrap();
    let first: serde_json::Value = serde_json::from_str(answers.lines().next().unwrap()).unwrap();
    assert_eq!(first["outputs"][1]["data"][0], held_out().labels[0]);
    assert!(!common::state_file(&output).exists(), "done: no state left");
    let job_queue = format!(
        "ember.{}.job.{}",
        worker.model,
        report["job"].as_str().unwrap()
    );
    assert!(
        transport.depth(&job_queue).await.is_err(),
        "the job's queue is gone"
    );

    // The finished output is not overwritten by another job.
    let again = submit(&worker.model, &input, &output).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        output_text(&again).contains("exists"),
        "{}",
        output_text(&again)
    );
    assert_eq!(answer_ids(&output).len(), 300);

    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_submit_continues_with_every_answer_once() {
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "batch-kill").await;
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let lines = 20_000;
    write_requests(&input, lines, &[]);

    let mut first = KillOnDrop(
        submit(&worker.model, &input, &output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let state = common::state_file(&output);
    let started = Instant::now();
    let written_at_kill = loop {
        let written = written_so_far(&state);
        if written >= 2_000 {
            first.0.kill().unwrap(); // SIGKILL: no chance to save anything
            first.0.wait().unwrap();
            break written;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(written_at_kill < lines as u64, "killed before the end");

    // The state belongs to this model's job: another model is refused.
    let other = submit("another-model", &input, &output).output().unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(
        output_text(&other).contains("belongs to a job for"),
        "{}",
        output_text(&other)
    );

    let second = submit(&worker.model, &input, &output).output().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", output_text(&second));
    let report = summary(&second);
    assert!(
        report["resumed_at"].as_u64().unwrap() >= written_at_kill,
        "{report}"
    );
    assert_eq!(report["written"], lines);
    assert_eq!(report["errors"], 0);
    assert_answers_in_order(&output, lines);
    assert!(!state.exists());

    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_the_blob_threshold_come_back_as_claim_checks_and_are_fetched() {
    let transport = Arc::new(broker(|c| c).await);
    let container = common::azurite_container("claims").await;
    let address = format!("az://{container}/answers");
    let auth = BlobAuth {
        connection_string: Some(common::azurite_connection_string().into()),
        ..BlobAuth::default()
    };
    let store = open_store(&address, &auth).unwrap();
    let claims = ClaimChecks::new(store.clone(), address.as_str());
    let worker = LocalWorker::start_with(transport.clone(), "batch-claims", Some(claims)).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    write_requests(&input, 50, &[]);
    // Every other request asks for its outputs as binary data: framed answers, claim-checked
    // with their framing, still written as JSON lines.
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(k, line)| {
            let mut request: serde_json::Value = serde_json::from_str(line).unwrap();
            if k % 2 == 1 {
                request["parameters"] = serde_json::json!({"binary_data_output": true});
            }
            request.to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();

    // Sent as binary tensor data.
    let run = submit(&worker.model, &input, &output)
        .args(["--blob-threshold", "200", "--binary"])
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            common::azurite_connection_string(),
        )
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", output_text(&run));
    assert_answers_in_order(&output, 50);
    let answers = std::fs::read_to_string(&output).unwrap();
    let data = held_out();
    let correct = answers
        .lines()
        .enumerate()
        .filter(|(k, line)| {
            let answer: serde_json::Value = serde_json::from_str(line).unwrap();
            answer["outputs"][1]["data"][0] == data.labels[*k]
        })
        .count();
    assert!(correct >= 45, "{correct} of 50 digits right");
    let listed = store.list("results").await.unwrap();
    assert_eq!(
        listed,
        vec![worker.model.clone()],
        "the answers went to blob storage"
    );

    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// `EMBER_BATCH_LINES` requests (default 100 000; the figures in the notes use 1 000 000 with
/// `cargo test --release`): the CLI's memory stays flat from a quarter of the way to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_file_is_submitted_in_flat_memory() {
    let lines: usize = std::env::var("EMBER_BATCH_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let transport = Arc::new(broker(|c| c).await);
    let worker = LocalWorker::start(transport.clone(), "batch-long").await;
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    write_requests(&input, lines, &[]);
    let state = common::state_file(&output);

    let started = Instant::now();
    let mut child = KillOnDrop(
        submit(&worker.model, &input, &output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let (mut peak, mut at_quarter) = (0, None);
    while child.0.try_wait().unwrap().is_none() {
        if let Some(bytes) = rss(pid) {
            peak = peak.max(bytes);
            let written = written_so_far(&state);
            if at_quarter.is_none() && written as usize >= lines / 4 {
                at_quarter = Some(bytes);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "the job succeeds");
    assert_answers_in_order(&output, lines);
    let at_quarter = at_quarter.expect("sampled at a quarter of the way");
    eprintln!(
        "{lines} requests in {seconds:.1} s ({:.0}/s): CLI peak RSS {:.1} MiB, {:.1} MiB at a quarter",
        lines as f64 / seconds,
        peak as f64 / (1 << 20) as f64,
        at_quarter as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= at_quarter + (16 << 20),
        "memory grew from {at_quarter} to {peak} bytes"
    );
    assert!(peak < 200 << 20, "peak RSS {peak} bytes");

    let model = worker.stop().await;
    transport.delete(&model).await.unwrap();
}
