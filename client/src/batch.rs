//! Batch jobs: requests sent to a model's batch lane with the job's results queue as their
//! `reply_to`; answers wait there, durable, until the submitter stores and acks them.

use super::{Client, ClientError, FIRST_BACKOFF, MAX_BACKOFF};
use crate::chain::Chain;
use crate::protocol::{ErrorCode, Lane};
use crate::transport::{
    ClientTransport, Delivery, Message, Properties, Subscription, TransportError, queues,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Requests of a batch job sent but not yet answered, by default.
pub const DEFAULT_WINDOW: usize = 4096;
/// A batch job's results queue is deleted by the broker after this long unused, by default.
pub const DEFAULT_JOB_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

impl Client {
    /// Starts a batch job for `model` (or continues one: the same [`BatchOptions::job`] with
    /// [`BatchOptions::first_index`] and [`BatchOptions::outstanding`] from where it stopped)
    /// and sends `requests` (OIP request bodies) from a task, index after index, at most
    /// [`BatchOptions::window`] unanswered at a time. Take the answers with
    /// [`BatchJob::next_result`].
    pub async fn submit_batch(
        &self,
        model: &str,
        requests: impl Stream<Item = Bytes> + Send + 'static,
        options: BatchOptions,
    ) -> Result<BatchJob, ClientError> {
        let first = options.first_index;
        let mut job = self.batch(model, options).await?;
        let sender = job.sender.clone();
        job.sending = Some(tokio::spawn(async move {
            let mut requests = std::pin::pin!(requests);
            let mut index = first;
            while let Some(body) = requests.next().await {
                sender.send(index, body).await?;
                index += 1;
            }
            Ok(index - first)
        }));
        Ok(job)
    }

    /// Opens a batch job for `model` without sending anything: send with
    /// [`BatchJob::sender`].
    pub async fn batch(&self, model: &str, options: BatchOptions) -> Result<BatchJob, ClientError> {
        let job = match options.job {
            Some(job) if is_job_id(&job) => job,
            Some(job) => return Err(ClientError::BadJobId(job)),
            None => self.ids.job(),
        };
        let results = queues::job_results(model, &job);
        self.transport
            .declare_queue(&results, Some(options.expiry))
            .await?;
        let state = Arc::new(BatchState::new(options.window, options.outstanding));
        let prefetch = state.window + state.outstanding().len() + 64;
        let subscription = self
            .transport
            .subscribe(std::slice::from_ref(&results), prefetch)
            .await?;
        let sender = BatchSender {
            transport: self.transport.clone(),
            model: model.to_owned(),
            job: job.clone(),
            requests: queues::requests(model, Lane::Batch),
            results,
            version: options.version,
            deadline: options.deadline,
            blob_threshold: options.blob_threshold,
            state,
        };
        Ok(BatchJob {
            sender,
            subscription,
            sending: None,
        })
    }
}

/// A batch job's settings.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Job id (names its results queue `ember.<model>.job.<id>` and its message ids
    /// `<id>-<index>`); default: a fresh one. Give the same id to continue a job.
    pub job: Option<String>,
    /// Version or alias (default: production).
    pub version: Option<String>,
    /// Requests sent but not answered at most (bounds the memory of whoever orders answers).
    pub window: usize,
    /// Requests not computed within this long of being sent are answered `DEADLINE_EXCEEDED`.
    pub deadline: Option<Duration>,
    /// Answers larger than this many bytes come back as claim checks (see [`super::redeem`]),
    /// where workers have a result store.
    pub blob_threshold: Option<u64>,
    /// The results queue is deleted by the broker once unused this long.
    pub expiry: Duration,
    /// Index of the first request [`Client::submit_batch`] sends (a continued job's next).
    pub first_index: u64,
    /// Indices sent earlier (by a previous run of the job) and not answered yet.
    pub outstanding: Range<u64>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            job: None,
            version: None,
            window: DEFAULT_WINDOW,
            deadline: None,
            blob_threshold: None,
            expiry: DEFAULT_JOB_EXPIRY,
            first_index: 0,
            outstanding: 0..0,
        }
    }
}

/// How far a batch job got in this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchProgress {
    /// Requests the broker confirmed.
    pub sent: u64,
    /// Distinct requests whose answer was acked.
    pub answered: u64,
}

/// A batch job: sends requests and hands out their answers.
pub struct BatchJob {
    sender: BatchSender,
    subscription: Box<dyn Subscription>,
    sending: Option<tokio::task::JoinHandle<Result<u64, ClientError>>>,
}

impl BatchJob {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.sender.job
    }

    /// Sends requests of this job (clone it into as many tasks as needed).
    pub fn sender(&self) -> &BatchSender {
        &self.sender
    }

    /// Counts so far.
    pub fn progress(&self) -> BatchProgress {
        self.sender.progress()
    }

    /// The next answer of this job (any order; duplicates possible after a resume: check the
    /// index). `None` if the transport closed.
    pub async fn next_result(&mut self) -> Option<BatchResult> {
        let delivery = self.subscription.next().await?;
        let index = delivery
            .message
            .properties
            .message_id
            .as_deref()
            .and_then(|id| id.strip_prefix(self.sender.job.as_str()))
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse().ok());
        Some(BatchResult {
            index: index.unwrap_or(u64::MAX),
            delivery,
            state: self.sender.state.clone(),
        })
    }

    /// Waits for [`Client::submit_batch`]'s sending task: how many requests it sent.
    pub async fn sent(&mut self) -> Result<u64, ClientError> {
        match self.sending.take() {
            Some(task) => task.await.map_err(|e| {
                ClientError::Transport(TransportError::unavailable_by("the sending task failed", e))
            })?,
            None => Ok(self.progress().sent),
        }
    }

    /// Ends the job: deletes its results queue (call once every answer is stored).
    pub async fn finish(mut self) -> Result<(), ClientError> {
        if let Some(task) = self.sending.take() {
            task.abort();
        }
        self.subscription.stop().await;
        self.sender
            .transport
            .delete_queue(&self.sender.results)
            .await?;
        Ok(())
    }
}

/// Sends a batch job's requests; cheap to clone.
#[derive(Clone)]
pub struct BatchSender {
    transport: Arc<dyn ClientTransport>,
    model: String,
    job: String,
    requests: String,
    results: String,
    version: Option<String>,
    deadline: Option<Duration>,
    blob_threshold: Option<u64>,
    state: Arc<BatchState>,
}

/// The window: `permits` + outstanding requests = `window` (while no more are outstanding).
struct BatchState {
    window: usize,
    permits: Semaphore,
    outstanding: Mutex<BTreeSet<u64>>,
    sent: AtomicU64,
    answered: AtomicU64,
}

impl BatchState {
    fn new(window: usize, outstanding: Range<u64>) -> Self {
        let window = window.max(1);
        let outstanding: BTreeSet<u64> = outstanding.collect();
        Self {
            window,
            permits: Semaphore::new(window.saturating_sub(outstanding.len())),
            outstanding: Mutex::new(outstanding),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }

    fn outstanding(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        // Every operation on the set is a single insert or remove.
        self.outstanding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a place in the window for request `index` (none needed if it is outstanding
    /// already: a request sent again), then counts it outstanding.
    async fn admit(&self, index: u64) {
        if self.outstanding().contains(&index) {
            return;
        }
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
        if !self.outstanding().insert(index) {
            // Sent twice at once: one place is enough.
            self.permits.add_permits(1);
        }
    }

    /// Request `index` is answered: its place frees (once, however often its answer comes),
    /// unless more than the window are outstanding (after a resume with a smaller window).
    fn answered(&self, index: u64) {
        let mut outstanding = self.outstanding();
        if outstanding.remove(&index) {
            self.answered.fetch_add(1, Ordering::Relaxed);
            if outstanding.len() < self.window {
                self.permits.add_permits(1);
            }
        }
    }
}

impl BatchSender {
    /// Sends request `index` with `body`, waiting while the window is full; returns once the
    /// broker has it. Sending an index again sends the same request (same message id).
    pub async fn send(&self, index: u64, body: Bytes) -> Result<(), ClientError> {
        self.send_framed(index, body, None).await
    }

    /// [`send`](Self::send) a body that is binary-framed with a JSON header of `header_length`
    /// bytes ([`crate::protocol::encode_framed_request`]), or JSON (`None`).
    pub async fn send_framed(
        &self,
        index: u64,
        body: Bytes,
        header_length: Option<usize>,
    ) -> Result<(), ClientError> {
        let id = format!("{}-{index}", self.job);
        let mut properties = Properties {
            message_id: Some(id.clone()),
            correlation_id: Some(id),
            reply_to: Some(self.results.clone()),
            model: Some(self.model.clone()),
            version: self.version.clone(),
            lane: Some(Lane::Batch),
            blob_threshold: self.blob_threshold,
            header_length: header_length.map(|n| n as u64),
            ..Properties::default()
        };
        if let Some(deadline) = self.deadline {
            properties = properties.with_deadline_in(deadline);
        }
        self.state.admit(index).await;
        let properties = properties.sent_now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let message = Message {
                body: body.clone(),
                properties: properties.clone(),
            };
            match self.transport.publish(&self.requests, message).await {
                Ok(()) => break,
                Err(TransportError::Unroutable(queue)) => {
                    return Err(ClientError::NoQueue {
                        model: self.model.clone(),
                        queue,
                    });
                }
                Err(e) => {
                    // Never give up on a batch: the broker comes back, or the user stops us.
                    tracing::warn!(error = %Chain(&e), "cannot send request {index}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.state.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts so far.
    pub fn progress(&self) -> BatchProgress {
        BatchProgress {
            sent: self.state.sent.load(Ordering::Relaxed),
            answered: self.state.answered.load(Ordering::Relaxed),
        }
    }
}

/// One answer of a batch job; [`ack`](Self::ack) it once stored (dropped unacked, it stays in
/// the job's queue and comes again).
pub struct BatchResult {
    /// Index of the request it answers (`u64::MAX` if its message id is not this job's).
    pub index: u64,
    delivery: Delivery,
    state: Arc<BatchState>,
}

impl BatchResult {
    /// The reply: an OIP response or error body.
    pub fn message(&self) -> &Message {
        &self.delivery.message
    }

    /// The error code, if the answer is an error.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.delivery.message.properties.error_code
    }

    /// Settles the answer: the job's queue forgets it, and its place in the window frees.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.delivery.settle.ack().await?;
        self.state.answered(self.index);
        Ok(())
    }
}

/// Whether `id` can name a job (its queue and message ids).
fn is_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::BatchState;
    use std::sync::Arc;
    use std::time::Duration;

    async fn admitted(state: &BatchState, index: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(50), state.admit(index))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_window_frees_once_per_answer_and_shrinks_back_after_a_resume() {
        // Resumed with 3 outstanding and a window of 2: nothing more until only 1 is left.
        let state = BatchState::new(2, 0..3);
        assert!(!admitted(&state, 3).await);
        state.answered(0);
        assert!(!admitted(&state, 3).await, "2 outstanding, window 2");
        state.answered(0);
        assert!(
            !admitted(&state, 3).await,
            "an answer that comes twice frees once"
        );
        state.answered(1);
        assert!(admitted(&state, 3).await);
        assert!(admitted(&state, 3).await, "sending again needs no place");
        assert!(!admitted(&state, 4).await, "2 and 3 outstanding");
    }

    #[tokio::test]
    async fn many_senders_waiting_on_a_small_window_all_get_through() {
        let state = Arc::new(BatchState::new(4, 0..0));
        let senders: Vec<_> = (0..64)
            .map(|index| {
                let state = state.clone();
                tokio::spawn(async move { state.admit(index).await })
            })
            .collect();
        let mut answered = 0;
        while answered < 64 {
            // Answer whatever is outstanding, as a worker would.
            let first = state.outstanding().first().copied();
            match first {
                Some(index) => {
                    assert!(state.outstanding().len() <= 4, "never more than the window");
                    state.answered(index);
                    answered += 1;
                }
                None => tokio::task::yield_now().await,
            }
        }
        for sender in senders {
            tokio::time::timeout(Duration::from_secs(5), sender)
                .await
                .expect("every sender admitted")
                .unwrap();
        }
        assert_eq!(state.permits.available_permits(), 4);
    }
}
