//! Dynamic batching, per model version.
//!
//! One task owns the queues (`docs/protocol.md`, conventions): requests arrive on a channel, and a batch is formed only
//! when the executor is free, from the realtime lane first, then the batch lane, up to
//! `max_batch_size` rows, once that many rows wait or the oldest request has waited
//! `max_batch_delay`. Requests past their deadline are answered `DEADLINE_EXCEEDED` and never
//! computed; requests whose caller has gone are dropped before compute.

use crate::protocol::{ErrorCode, InferError, Lane, ValidatedInputs};
use crate::runtime::{Executor, Responder, Work};
use crate::telemetry::metrics::VersionMetrics;
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Default for `--max-batch-size`.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;
/// Default for `--max-batch-delay`.
pub const DEFAULT_MAX_BATCH_DELAY: Duration = Duration::from_millis(2);

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows in one batch (a single larger request still runs, alone).
    pub max_batch_size: usize,
    /// Longest a request waits for company once the executor is free.
    pub max_batch_delay: Duration,
    /// Most tokens (rows × longest row) in one pass of a text model; a batch with more runs
    /// in several passes of similar lengths.
    pub max_batch_tokens: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_batch_delay: DEFAULT_MAX_BATCH_DELAY,
            max_batch_tokens: crate::models::text::DEFAULT_MAX_BATCH_TOKENS,
        }
    }
}

/// A request waiting to be batched.
#[derive(Debug)]
pub struct Job {
    /// Its validated inputs.
    pub inputs: ValidatedInputs,
    /// Its lane.
    pub lane: Lane,
    /// When its answer stops being useful.
    pub deadline: Option<SystemTime>,
    /// Where its answer goes.
    pub respond: Responder,
}

impl Job {
    /// A job and the receiver of its answer.
    pub fn new(
        inputs: ValidatedInputs,
        lane: Lane,
        deadline: Option<SystemTime>,
    ) -> (
        Self,
        oneshot::Receiver<Result<Vec<crate::protocol::TensorData>, InferError>>,
    ) {
        let (respond, answer) = oneshot::channel();
        let job = Self {
            inputs,
            lane,
            deadline,
            respond,
        };
        (job, answer)
    }
}

/// Handle to a model version's batcher; cheap to clone. The batcher stops (after finishing what
/// it holds) when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the batcher task feeding `executor`, whose batch-done signals arrive on `done`;
    /// waits, batch sizes and drops are recorded in `metrics`.
    pub fn spawn(
        executor: Executor,
        done: mpsc::UnboundedReceiver<()>,
        config: BatchConfig,
        metrics: VersionMetrics,
    ) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let lanes = Lanes {
            realtime: VecDeque::new(),
            batch: VecDeque::new(),
            rows: 0,
            metrics,
        };
        tokio::spawn(run(rx, lanes, executor, done, config));
        Self { jobs }
    }

    /// Queues `job`. Fails only when the batcher has stopped; the job is then answered INTERNAL.
    pub fn submit(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            let _ = job
                .respond
                .send(Err(InferError::internal("model is shutting down")));
        }
    }
}

/// The batcher's owned state.
struct Lanes {
    realtime: VecDeque<Queued>,
    batch: VecDeque<Queued>,
    rows: usize,
    metrics: VersionMetrics,
}

struct Queued {
    job: Job,
    arrived: Instant,
}

impl Lanes {
    fn push(&mut self, job: Job) {
        self.rows += job.inputs.rows;
        let queued = Queued {
            job,
            arrived: Instant::now(),
        };
        match queued.job.lane {
            Lane::Realtime => self.realtime.push_back(queued),
            Lane::Batch => self.batch.push_back(queued),
        }
    }

    /// When the oldest waiting request has waited long enough.
    fn flush_at(&self, delay: Duration) -> Option<Instant> {
        let oldest = [self.realtime.front(), self.batch.front()]
            .into_iter()
            .flatten()
            .map(|q| q.arrived)
            .min()?;
        Some(oldest + delay)
    }

    /// Takes the next batch: realtime first, then batch, in arrival order, up to `max_rows`
    /// (a first request larger than that goes alone). Expired and abandoned requests are
    /// settled on the way.
    fn take_batch(&mut self, max_rows: usize) -> Vec<Work> {
        let now = SystemTime::now();
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut rows = 0;
        for lane in [&mut self.realtime, &mut self.batch] {
            while let Some(queued) = lane.front() {
                let job = &queued.job;
                let expired = job.deadline.is_some_and(|d| d <= now);
                if !expired
                    && !job.respond.is_closed()
                    && rows > 0
                    && rows + job.inputs.rows > max_rows
                {
                    return batch;
                }
                let Queued { job, arrived } = lane.pop_front().expect("front exists");
                let Job {
                    inputs, respond, ..
                } = job;
                self.rows -= inputs.rows;
                if respond.is_closed() {
                    self.metrics.abandoned.increment(1);
                } else if expired {
                    self.metrics.deadline_drops.increment(1);
                    let _ = respond.send(Err(InferError::new(
                        ErrorCode::DeadlineExceeded,
                        "deadline passed before the request was computed",
                    )));
                } else {
                    rows += inputs.rows;
                    let waited = started.saturating_duration_since(arrived);
                    self.metrics.batch_wait.record(waited.as_secs_f64());
                    batch.push(Work { inputs, respond });
                }
            }
        }
        batch
    }
}

async fn run(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut lanes: Lanes,
    executor: Executor,
    mut done: mpsc::UnboundedReceiver<()>,
    config: BatchConfig,
) {
    let (mut busy, mut open) = (false, true);
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let flush_at = lanes.flush_at(config.max_batch_delay);
        if let Some(at) = flush_at {
            timer.as_mut().reset(at.into());
        }
        tokio::select! {
            biased;
            signal = done.recv(), if busy => match signal {
                Some(()) => busy = false,
                None => break, // executor thread is gone; its responders were dropped
            },
            job = jobs.recv(), if open => match job {
                Some(job) => lanes.push(job),
                None => open = false,
            },
            () = &mut timer, if !busy && flush_at.is_some() => {}
        }
        while let Ok(job) = jobs.try_recv() {
            lanes.push(job);
        }
        let due = flush_at.is_some_and(|at| at <= Instant::now());
        if !busy && lanes.rows > 0 && (lanes.rows >= config.max_batch_size || due || !open) {
            let batch = lanes.take_batch(config.max_batch_size);
            if !batch.is_empty() {
                busy = executor.run(batch);
                if !busy {
                    break;
                }
            }
        }
        if !open && !busy && lanes.rows == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorData;

    fn job(
        lane: Lane,
        rows: usize,
        deadline: Option<SystemTime>,
    ) -> (Job, oneshot::Receiver<Result<Vec<TensorData>, InferError>>) {
        let inputs = ValidatedInputs {
            rows,
            tensors: vec![TensorData::F32(vec![rows as f32; rows])],
        };
        Job::new(inputs, lane, deadline)
    }

    fn lanes() -> Lanes {
        Lanes {
            realtime: VecDeque::new(),
            batch: VecDeque::new(),
            rows: 0,
            metrics: VersionMetrics::new("test", "1"),
        }
    }

    fn tags(batch: &[Work]) -> Vec<f32> {
        batch
            .iter()
            .map(|w| w.inputs.tensors[0].as_f32().unwrap()[0])
            .collect()
    }

    #[test]
    fn realtime_is_drained_before_batch() {
        let mut lanes = lanes();
        let mut answers = Vec::new();
        for (tag, lane) in [Lane::Batch, Lane::Realtime, Lane::Batch, Lane::Realtime]
            .into_iter()
            .enumerate()
        {
            let (mut j, a) = job(lane, 1, None);
            j.inputs.tensors[0] = TensorData::F32(vec![tag as f32]);
            lanes.push(j);
            answers.push(a);
        }
        assert_eq!(tags(&lanes.take_batch(3)), vec![1.0, 3.0, 0.0]);
        assert_eq!(tags(&lanes.take_batch(3)), vec![2.0]);
        assert_eq!(lanes.rows, 0);
    }

    #[test]
    fn batches_never_exceed_max_rows_except_a_lone_large_request() {
        let mut lanes = lanes();
        let mut keep = Vec::new();
        for rows in [3, 3, 10] {
            let (j, a) = job(Lane::Batch, rows, None);
            lanes.push(j);
            keep.push(a);
        }
        let sizes = |b: &Vec<Work>| b.iter().map(|w| w.inputs.rows).collect::<Vec<_>>();
        assert_eq!(sizes(&lanes.take_batch(8)), vec![3, 3]);
        assert_eq!(sizes(&lanes.take_batch(8)), vec![10]);
        assert!(lanes.take_batch(8).is_empty());
    }

    #[test]
    fn expired_requests_are_answered_deadline_exceeded_and_not_batched() {
        let mut lanes = lanes();
        let past = SystemTime::now() - Duration::from_secs(1);
        let (expired, mut expired_answer) = job(Lane::Realtime, 1, Some(past));
        let (fresh, _fresh_answer) = job(
            Lane::Realtime,
            1,
            Some(SystemTime::now() + Duration::from_secs(60)),
        );
        lanes.push(expired);
        lanes.push(fresh);
        let batch = lanes.take_batch(8);
        assert_eq!(batch.len(), 1);
        let err = expired_answer.try_recv().unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::DeadlineExceeded);
    }

    #[test]
    fn abandoned_requests_are_dropped_before_compute() {
        let mut lanes = lanes();
        let (j, answer) = job(Lane::Batch, 4, None);
        lanes.push(j);
        drop(answer);
        assert!(lanes.take_batch(8).is_empty());
        assert_eq!(lanes.rows, 0);
    }
}
