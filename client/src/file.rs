//! `ember batch submit`: a JSON Lines file of OIP requests run as one batch job, the answers
//! written to a JSON Lines file in input order. Memory stays flat however long the file: lines
//! are read as they are sent, and at most the job's window of answers waits for an earlier one.
//!
//! **Resume.** Beside the output, `<output>.ember-batch` records the job id, how many requests
//! the broker confirmed and how many answers are written (and the output's length then). It is
//! saved after the output is flushed and synced, and answers are acked only after that, so a run
//! killed at any point continues with the same command: the output is cut back to the recorded
//! length, requests already confirmed are not sent again, and their answers are taken from the
//! job's queue, where they waited. An answer that comes twice is written once.

use super::{BatchOptions, BatchResult, ClaimStore, Client, ClientError, redeem};
use crate::chain::Chain;
use crate::protocol::{self, ErrorResponse, InferError};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio_util::sync::CancellationToken;

/// Requests whose confirms are awaited at once.
const SEND_AHEAD: usize = 256;
/// How often the state is saved (and answers acked) at least.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Answers written before the state is saved early (half the window, if that is fewer: the
/// window's places free only once the answers are acked, after the save).
const CHECKPOINT_ANSWERS: usize = 2048;
/// Error messages kept for the summary.
const ERRORS_SHOWN: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// The model asked.
    pub model: String,
    /// Version or alias (default: production).
    pub version: Option<String>,
    /// JSON Lines of OIP requests (blank lines are skipped).
    pub input: PathBuf,
    /// JSON Lines of answers, one per request, in input order.
    pub output: PathBuf,
    /// Requests sent and not yet answered at most.
    pub window: usize,
    /// Requests not computed within this long of being sent are answered `DEADLINE_EXCEEDED`.
    pub deadline: Option<Duration>,
    /// Draw a progress bar (on a terminal; elsewhere a line every 10 s).
    pub progress: bool,
    /// Answers larger than this come back as claim checks, fetched into the output.
    pub blob_threshold: Option<u64>,
    /// Where claim-checked answers are fetched from.
    pub storage: Arc<dyn ClaimStore>,
    /// Send the inputs as binary tensor data ([`protocol::to_binary`]); answers are written as
    /// JSON whichever way they come.
    pub binary: bool,
}

/// How a run went.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    /// The job's id.
    pub job: String,
    /// Requests in the input.
    pub requests: u64,
    /// Answers in the output.
    pub written: u64,
    /// Of which errors.
    pub errors: u64,
    /// Answers written by an earlier run this one continued.
    pub resumed_at: Option<u64>,
    /// The first few errors of this run, as `line N: CODE message`.
    pub first_errors: Vec<String>,
    /// Seconds this run took.
    pub seconds: f64,
    /// Whether it stopped before the end (run the same command to continue).
    pub interrupted: bool,
}

/// Why a file job could not run.
#[derive(Debug, thiserror::Error)]
pub enum FileJobError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The output or state does not belong to this job.
    #[error("{0}")]
    Conflict(String),
    /// Talking to the broker.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileJobError + '_ {
    move |source| FileJobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state file of `output`.
pub fn state_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".ember-batch");
    PathBuf::from(name)
}

/// What the state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    job: String,
    model: String,
    version: Option<String>,
    input_bytes: u64,
    requests: u64,
    sent: u64,
    written: u64,
    output_bytes: u64,
    errors: u64,
}

impl State {
    async fn load(path: &Path) -> Result<Option<Self>, FileJobError> {
        match tokio::fs::read(path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                FileJobError::Conflict(format!(
                    "{} is not an Ember batch state file ({e}); remove it to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Replaces the state file atomically (write beside, sync, rename).
    async fn save(&self, path: &Path) -> Result<(), FileJobError> {
        let temporary = path.with_extension("ember-batch.tmp");
        let json = serde_json::to_vec(self).expect("state serializes");
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(io(&temporary))?;
        file.write_all(&json).await.map_err(io(&temporary))?;
        file.sync_data().await.map_err(io(&temporary))?;
        tokio::fs::rename(&temporary, path).await.map_err(io(path))
    }
}

/// Runs `job` through `client` until every request is answered or `stop` is cancelled.
pub async fn submit(
    client: &Client,
    job: &FileJob,
    stop: CancellationToken,
) -> Result<FileSummary, FileJobError> {
    let started = Instant::now();
    let state_file = state_path(&job.output);
    let input_bytes = tokio::fs::metadata(&job.input)
        .await
        .map_err(io(&job.input))?
        .len();
    let (mut state, resumed) = match State::load(&state_file).await? {
        Some(state) => (resume(job, state, input_bytes).await?, true),
        None => (start(client, job, input_bytes).await?, false),
    };
    // A new job that fails before the broker has any of its requests leaves nothing behind:
    // no output, no state, no queue (there is nothing to continue).
    let discard = async || {
        if !resumed {
            let _ = tokio::fs::remove_file(&job.output).await;
            let _ = tokio::fs::remove_file(&state_file).await;
        }
    };
    if let Err(e) = state.save(&state_file).await {
        discard().await;
        return Err(e);
    }
    let resumed_at = resumed.then_some(state.written);

    let options = BatchOptions {
        job: Some(state.job.clone()),
        version: job.version.clone(),
        window: job.window,
        deadline: job.deadline,
        blob_threshold: job.blob_threshold,
        first_index: state.sent,
        outstanding: state.written..state.sent,
        ..BatchOptions::default()
    };
    let mut batch = match client.batch(&job.model, options).await {
        Ok(batch) => batch,
        Err(e) => {
            discard().await;
            return Err(e.into());
        }
    };
    let confirmed = Arc::new(AtomicU64::new(state.sent));
    let mut sending = tokio::spawn(send_lines(
        batch.sender().clone(),
        job.input.clone(),
        state.sent,
        job.binary,
        confirmed.clone(),
    ));
    let mut sending_done = state.sent == state.requests;

    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&job.output)
        .await
        .map_err(io(&job.output))?;
    let mut output = Output {
        writer: BufWriter::with_capacity(1 << 20, file),
        path: job.output.clone(),
        bytes: state.output_bytes,
        storage: job.storage.clone(),
        written: Vec::new(),
    };
    let progress = Progress::new(job.progress, &state);
    let mut waiting: BTreeMap<u64, BatchResult> = BTreeMap::new();
    let mut first_errors = Vec::new();
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    let checkpoint_answers = CHECKPOINT_ANSWERS.min(job.window / 2).max(1);
    let mut interrupted = false;
    let ran = async {
    while state.written < state.requests {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                interrupted = true;
                break;
            }
            sent = &mut sending, if !sending_done => {
                sending_done = true;
                sent.map_err(|e| FileJobError::Conflict(format!("sending stopped: {e}")))??;
            }
            result = batch.next_result() => {
                let Some(result) = result else {
                    return Err(FileJobError::Conflict("the transport closed the job's results".into()));
                };
                let index = result.index;
                if index < state.written || index >= state.requests || waiting.contains_key(&index) {
                    // Written already (an answer that came twice), or not this job's.
                    output.written.push(result);
                    continue;
                }
                waiting.insert(index, result);
                while let Some(result) = waiting.remove(&state.written) {
                    if let Some(code) = result.error_code() {
                        state.errors += 1;
                        if first_errors.len() < ERRORS_SHOWN {
                            let message = serde_json::from_slice::<ErrorResponse>(&result.message().body)
                                .map_or_else(|_| String::new(), |e| e.error);
                            first_errors.push(format!("line {}: {code} {message}", state.written + 1));
                        }
                    }
                    output.write(result).await?;
                    state.written += 1;
                }
                if output.written.len() >= checkpoint_answers {
                    checkpoint(&mut output, &mut state, &confirmed, &state_file).await?;
                }
            }
            _ = tick.tick() => {
                checkpoint(&mut output, &mut state, &confirmed, &state_file).await?;
                progress.show(&state, started);
            }
        }
    }
    Ok(())
    }
    .await;
    sending.abort();
    if let Err(e) = ran {
        if state.written == 0 && confirmed.load(Ordering::Acquire) == 0 {
            let _ = batch.finish().await;
            drop(output);
            discard().await;
        }
        return Err(e);
    }
    checkpoint(&mut output, &mut state, &confirmed, &state_file).await?;
    progress.finish(&state);
    if !interrupted {
        batch.finish().await?;
        tokio::fs::remove_file(&state_file)
            .await
            .map_err(io(&state_file))?;
    }
    Ok(FileSummary {
        job: state.job,
        requests: state.requests,
        written: state.written,
        errors: state.errors,
        resumed_at,
        first_errors,
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
    })
}

/// A new job: the output must not hold another job's answers.
async fn start(client: &Client, job: &FileJob, input_bytes: u64) -> Result<State, FileJobError> {
    match tokio::fs::metadata(&job.output).await {
        Ok(meta) if meta.len() > 0 => {
            return Err(FileJobError::Conflict(format!(
                "{} exists and no interrupted job writes to it (no {}); remove it or choose \
                 another --output",
                job.output.display(),
                state_path(&job.output).display()
            )));
        }
        _ => {}
    }
    tokio::fs::File::create(&job.output)
        .await
        .map_err(io(&job.output))?;
    Ok(State {
        job: client.ids.job(),
        model: job.model.clone(),
        version: job.version.clone(),
        input_bytes,
        requests: count_requests(&job.input).await?,
        sent: 0,
        written: 0,
        output_bytes: 0,
        errors: 0,
    })
}

/// An interrupted job: the same model and input, the output cut back to what the state covers.
async fn resume(job: &FileJob, state: State, input_bytes: u64) -> Result<State, FileJobError> {
    if state.model != job.model || state.version != job.version {
        return Err(FileJobError::Conflict(format!(
            "{} belongs to a job for {} {}; give the same --model and --version, or remove it \
             and {} to start over",
            state_path(&job.output).display(),
            state.model,
            state.version.as_deref().unwrap_or("(production)"),
            job.output.display()
        )));
    }
    if state.input_bytes != input_bytes {
        return Err(FileJobError::Conflict(format!(
            "{} changed since the job started ({} bytes then, {input_bytes} now); remove {} to \
             start over",
            job.input.display(),
            state.input_bytes,
            state_path(&job.output).display()
        )));
    }
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&job.output)
        .await
        .map_err(io(&job.output))?;
    let length = file.metadata().await.map_err(io(&job.output))?.len();
    if length < state.output_bytes {
        return Err(FileJobError::Conflict(format!(
            "{} is shorter than its state says ({length} < {} bytes); remove it and {} to start over",
            job.output.display(),
            state.output_bytes,
            state_path(&job.output).display()
        )));
    }
    file.set_len(state.output_bytes)
        .await
        .map_err(io(&job.output))?;
    tracing::info!(job = %state.job, written = state.written, sent = state.sent, "continuing an interrupted batch job");
    Ok(state)
}

/// Saves progress: output flushed and synced, then the state, then the written answers acked.
async fn checkpoint(
    output: &mut Output,
    state: &mut State,
    confirmed: &AtomicU64,
    state_file: &Path,
) -> Result<(), FileJobError> {
    output.writer.flush().await.map_err(io(&output.path))?;
    output
        .writer
        .get_ref()
        .sync_data()
        .await
        .map_err(io(&output.path))?;
    state.sent = confirmed.load(Ordering::Acquire).max(state.written);
    state.output_bytes = output.bytes;
    state.save(state_file).await?;
    for result in output.written.drain(..) {
        if let Err(e) = result.ack().await {
            // Not acked: it comes again, and is recognised as written.
            tracing::debug!(error = %Chain(&e), "acking an answer failed");
        }
    }
    Ok(())
}

/// The output file, its length, and the answers written to it but not yet acked.
struct Output {
    writer: BufWriter<tokio::fs::File>,
    path: PathBuf,
    bytes: u64,
    storage: Arc<dyn ClaimStore>,
    written: Vec<BatchResult>,
}

impl Output {
    /// Writes `result`'s answer (fetched, if it is a claim check; as JSON, if it came as binary
    /// data) as the next line.
    async fn write(&mut self, result: BatchResult) -> Result<(), FileJobError> {
        let message = result.message();
        let redeemed;
        let message = match message.properties.claim_check {
            Some(_) => {
                redeemed = redeem(message, self.storage.as_ref()).await?;
                &redeemed
            }
            None => message,
        };
        let header_length = message.properties.header_length.map(|n| n as usize);
        let body = protocol::reply_as_json(&message.body, header_length).unwrap_or_else(|reason| {
            // The worker's answer is broken: an error line says so, in its place.
            let id = protocol::request_id(
                message
                    .body
                    .get(..header_length.unwrap_or(0))
                    .unwrap_or_default(),
            );
            let error = InferError::internal(format!("unreadable binary answer: {reason}"));
            protocol::encode_reply(&Err(ErrorResponse::new(id.unwrap_or_default(), &error)))
                .0
                .into()
        });
        self.writer.write_all(&body).await.map_err(io(&self.path))?;
        self.writer.write_all(b"\n").await.map_err(io(&self.path))?;
        self.bytes += body.len() as u64 + 1;
        self.written.push(result);
        Ok(())
    }
}

/// Sends the requests of `input` from index `first` on (inputs as binary data with `binary`);
/// `confirmed` counts the leading requests the broker has.
async fn send_lines(
    sender: super::BatchSender,
    input: PathBuf,
    first: u64,
    binary: bool,
    confirmed: Arc<AtomicU64>,
) -> Result<(), FileJobError> {
    let lines = requests(&input).await.map_err(io(&input))?;
    let sends = lines
        .skip(usize::try_from(first).unwrap_or(usize::MAX))
        .enumerate()
        .map(|(k, body)| {
            let (sender, input) = (sender.clone(), &input);
            async move {
                let body = body.map_err(io(input))?;
                let index = first + k as u64;
                let sent = match binary.then(|| protocol::to_binary(&body)).flatten() {
                    Some((framed, length)) => {
                        sender.send_framed(index, framed.into(), Some(length))
                    }
                    None => sender.send_framed(index, body, None),
                };
                Ok::<_, FileJobError>(sent.await?)
            }
        })
        .buffered(SEND_AHEAD);
    let mut sends = std::pin::pin!(sends);
    while let Some(sent) = sends.next().await {
        sent?;
        confirmed.fetch_add(1, Ordering::Release);
    }
    Ok(())
}

/// The non-blank lines of `path`, without their line ends.
async fn requests(
    path: &Path,
) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    let file = tokio::fs::File::open(path).await?;
    let reader = BufReader::with_capacity(1 << 20, file);
    Ok(futures::stream::try_unfold(
        reader,
        |mut reader| async move {
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(None);
                }
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        line.pop();
                    }
                    return Ok(Some((Bytes::from(line), reader)));
                }
            }
        },
    ))
}

/// How many requests (non-blank lines) `path` holds.
async fn count_requests(path: &Path) -> Result<u64, FileJobError> {
    requests(path)
        .await
        .map_err(io(path))?
        .try_fold(0u64, |n, _| async move { Ok(n + 1) })
        .await
        .map_err(io(path))
}

/// The progress bar (or, off a terminal, a line every 10 s).
struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    last_line: std::sync::Mutex<Instant>,
    start_written: u64,
}

impl Progress {
    fn new(enabled: bool, state: &State) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(state.requests), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} answered · {msg} · ETA {eta}")
                    .expect("valid template"),
            );
            bar.set_position(state.written);
            bar.reset_eta();
            bar
        });
        Self {
            bar,
            lines: enabled && !terminal,
            last_line: std::sync::Mutex::new(Instant::now()),
            start_written: state.written,
        }
    }

    fn show(&self, state: &State, started: Instant) {
        // This run's answers over this run's time (not those an interrupted run wrote).
        let rate =
            (state.written - self.start_written) as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let message = format!(
            "sent {} · errors {} · {rate:.0}/s",
            state.sent, state.errors
        );
        if let Some(bar) = &self.bar {
            bar.set_position(state.written);
            bar.set_message(message);
        } else if self.lines {
            let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(10) {
                *last = Instant::now();
                eprintln!("{}/{} answered · {message}", state.written, state.requests);
            }
        }
    }

    fn finish(&self, state: &State) {
        if let Some(bar) = &self.bar {
            bar.set_position(state.written);
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_skip_blank_lines_and_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n   \n{\"b\":2}\n{\"c\":3}").unwrap();
        let lines: Vec<Bytes> = requests(&path).await.unwrap().try_collect().await.unwrap();
        assert_eq!(
            lines,
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"].map(Bytes::from)
        );
        assert_eq!(count_requests(&path).await.unwrap(), 3);
    }

    #[test]
    fn the_state_file_sits_beside_the_output() {
        assert_eq!(
            state_path(Path::new("out/results.jsonl")),
            Path::new("out/results.jsonl.ember-batch")
        );
    }
}
