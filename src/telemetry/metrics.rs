//! The metrics Ember records: names (`ember_` prefix, base units, `_total` counters), their
//! help texts, and per-model handles created once so the hot path only adds to atomics.
//!
//! Label values never come from a message unchecked: `model` is the queue's validated name,
//! `version` the served manifest's, `lane` and `code` small enums. A producer cannot blow up
//! the series count.

use crate::protocol::{ErrorCode, Lane};
use metrics::{Counter, Gauge, Histogram, SharedString, Unit};
use std::sync::Arc;
use std::time::Duration;

/// Requests answered, by `model`, `version` (empty when none was resolved), `lane`, `code`
/// (`OK` or the error code).
pub const REQUESTS: &str = "ember_requests_total";
/// Receipt of a delivery → its answer published (confirmed), by `model`, `lane`.
pub const REQUEST_DURATION: &str = "ember_request_duration_seconds";
/// Producer's send (`ember-sent-ms`) → receipt by a worker, by `model`, `lane`.
pub const QUEUE_WAIT: &str = "ember_queue_wait_seconds";
/// Arrival in the batcher → start of its batch's compute, by `model`, `version`.
pub const BATCH_WAIT: &str = "ember_batch_wait_seconds";
/// One batch's forward pass, by `model`, `version`.
pub const COMPUTE: &str = "ember_batch_compute_seconds";
/// Rows in one batch, by `model`, `version`.
pub const BATCH_SIZE: &str = "ember_batch_size";
/// Requests taken and not yet settled, by `model`.
pub const IN_FLIGHT: &str = "ember_requests_in_flight";
/// Fetching, verifying, loading and warming up a version, by `model`.
pub const MODEL_LOAD: &str = "ember_model_load_seconds";
/// 1 for the version an alias serves, 0 for one it served before, by `model`, `alias`,
/// `version`.
pub const MODEL_INFO: &str = "ember_model_info";
/// Alias switches (hot reloads), by `model`, `outcome` (`switched`, `failed`).
pub const MODEL_RELOADS: &str = "ember_model_reloads_total";
/// Deliveries the broker had delivered before, by `model`.
pub const REDELIVERED: &str = "ember_deliveries_redelivered_total";
/// Deliveries moved to the dead-letter queue, by `model`, `code`.
pub const DEAD_LETTERED: &str = "ember_deliveries_dead_lettered_total";
/// Internal failures put back for another try, by `model`.
pub const REQUEUED: &str = "ember_deliveries_requeued_total";
/// Redeliveries answered from the remembered answer, not computed again, by `model`.
pub const DEDUPLICATED: &str = "ember_requests_deduplicated_total";
/// Requests past their deadline, answered DEADLINE_EXCEEDED without compute, by `model`.
pub const DEADLINE_DROPS: &str = "ember_deadline_drops_total";
/// Requests whose caller had gone before compute, by `model`.
pub const ABANDONED: &str = "ember_requests_abandoned_total";
pub use crate::transport::metrics::{RECONNECTS, UNROUTABLE_UNMATCHED};
/// Weights found in the local cache.
pub const CACHE_HITS: &str = "ember_model_cache_hits_total";
/// Weights downloaded because the cache lacked them.
pub const CACHE_MISSES: &str = "ember_model_cache_misses_total";
/// Bytes downloaded from the model repository.
pub const DOWNLOAD_BYTES: &str = "ember_store_download_bytes_total";
/// Repository requests retried after a transient failure.
pub const STORE_RETRIES: &str = "ember_store_retries_total";

/// Histogram buckets of request-path durations: 250 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    30.0,
];
/// Histogram buckets of batch sizes (rows).
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Histogram buckets of model loads: 10 ms to 5 min.
pub const LOAD_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Registers the help text and unit of every metric (shown by `/metrics`).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, Unit::Count, "Requests answered, by outcome code");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Delivery received to answer published and confirmed"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Producer send (ember-sent-ms) to delivery received"
    );
    describe_histogram!(
        BATCH_WAIT,
        Unit::Seconds,
        "Arrival in the batcher to the start of the batch's compute"
    );
    describe_histogram!(COMPUTE, Unit::Seconds, "One batch's forward pass");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Rows per batch");
    describe_gauge!(IN_FLIGHT, Unit::Count, "Requests taken and not yet settled");
    describe_histogram!(
        MODEL_LOAD,
        Unit::Seconds,
        "Fetching, verifying, loading and warming up a model version"
    );
    describe_gauge!(
        MODEL_INFO,
        "1 for the version an alias serves now, 0 for versions it served before"
    );
    describe_counter!(MODEL_RELOADS, Unit::Count, "Alias switches (hot reloads)");
    describe_counter!(REDELIVERED, Unit::Count, "Deliveries delivered before");
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Deliveries moved to the dead-letter queue"
    );
    describe_counter!(
        REQUEUED,
        Unit::Count,
        "Internal failures put back for another try"
    );
    describe_counter!(
        DEDUPLICATED,
        Unit::Count,
        "Repeated requests answered from memory"
    );
    describe_counter!(
        DEADLINE_DROPS,
        Unit::Count,
        "Requests past their deadline, never computed"
    );
    describe_counter!(ABANDONED, Unit::Count, "Requests whose caller had gone");
    describe_counter!(RECONNECTS, Unit::Count, "Broker connections reopened");
    describe_counter!(
        UNROUTABLE_UNMATCHED,
        Unit::Count,
        "Unroutable messages reported to the wrong publisher"
    );
    describe_counter!(CACHE_HITS, Unit::Count, "Weights found in the local cache");
    describe_counter!(CACHE_MISSES, Unit::Count, "Weights downloaded");
    describe_counter!(
        DOWNLOAD_BYTES,
        Unit::Bytes,
        "Bytes downloaded from the model repository"
    );
    describe_counter!(STORE_RETRIES, Unit::Count, "Repository requests retried");
    // Counters without labels exist from the start (at 0), so rates and alerts see them.
    for name in [
        RECONNECTS,
        UNROUTABLE_UNMATCHED,
        CACHE_HITS,
        CACHE_MISSES,
        DOWNLOAD_BYTES,
        STORE_RETRIES,
    ] {
        metrics::counter!(name).absolute(0);
    }
}

/// The outcome label of an answer: `OK` or its error code.
pub fn code_label(code: Option<ErrorCode>) -> &'static str {
    code.map_or("OK", ErrorCode::as_str)
}

/// Handles of one model's worker-side metrics, made when it starts being served.
#[derive(Clone)]
pub struct ModelMetrics {
    model: SharedString,
    in_flight: Gauge,
    redelivered: Counter,
    requeued: Counter,
    deduplicated: Counter,
    lanes: [LaneMetrics; 2],
}

#[derive(Clone)]
struct LaneMetrics {
    duration: Histogram,
    queue_wait: Histogram,
}

impl ModelMetrics {
    /// The handles of `model`'s metrics.
    pub fn new(model: &str) -> Self {
        let model = SharedString::from_shared(Arc::<str>::from(model));
        let lane = |lane: Lane| LaneMetrics {
            duration: metrics::histogram!(REQUEST_DURATION, "model" => model.clone(), "lane" => lane.as_str()),
            queue_wait: metrics::histogram!(QUEUE_WAIT, "model" => model.clone(), "lane" => lane.as_str()),
        };
        for outcome in ["switched", "failed"] {
            metrics::counter!(MODEL_RELOADS, "model" => model.clone(), "outcome" => outcome)
                .absolute(0);
        }
        Self {
            in_flight: metrics::gauge!(IN_FLIGHT, "model" => model.clone()),
            redelivered: metrics::counter!(REDELIVERED, "model" => model.clone()),
            requeued: metrics::counter!(REQUEUED, "model" => model.clone()),
            deduplicated: metrics::counter!(DEDUPLICATED, "model" => model.clone()),
            lanes: [lane(Lane::Realtime), lane(Lane::Batch)],
            model,
        }
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.model
    }

    fn lane(&self, lane: Lane) -> &LaneMetrics {
        &self.lanes[usize::from(lane == Lane::Batch)]
    }

    /// A delivery was taken: counts it in flight (until [`settled`](Self::settled)), as a
    /// redelivery if it is one, and its time in the queue if the producer stamped it.
    pub fn received(&self, lane: Lane, redelivered: bool, queued: Option<Duration>) {
        self.in_flight.increment(1.0);
        if redelivered {
            self.redelivered.increment(1);
        }
        if let Some(queued) = queued {
            self.lane(lane).queue_wait.record(queued.as_secs_f64());
        }
    }

    /// A delivery taken `elapsed` ago was settled.
    pub fn settled(&self, lane: Lane, elapsed: Duration) {
        self.in_flight.decrement(1.0);
        self.lane(lane).duration.record(elapsed.as_secs_f64());
    }

    /// An answer was published: `version` is the served version ("" if none was resolved).
    pub fn answered(&self, version: &str, lane: Lane, code: Option<ErrorCode>) {
        metrics::counter!(
            REQUESTS,
            "model" => self.model.clone(),
            "version" => SharedString::from_owned(version.to_owned()),
            "lane" => lane.as_str(),
            "code" => code_label(code),
        )
        .increment(1);
    }

    /// A delivery was moved to the dead-letter queue with `code`.
    pub fn dead_lettered(&self, code: ErrorCode) {
        metrics::counter!(DEAD_LETTERED, "model" => self.model.clone(), "code" => code.as_str())
            .increment(1);
    }

    /// An internal failure was requeued for another try.
    pub fn requeued(&self) {
        self.requeued.increment(1);
    }

    /// A repeated request was answered from memory.
    pub fn deduplicated(&self) {
        self.deduplicated.increment(1);
    }
}

/// Handles of one served model version's batcher and executor metrics.
#[derive(Clone)]
pub struct VersionMetrics {
    /// Arrival in the batcher → compute.
    pub batch_wait: Histogram,
    /// Rows per batch.
    pub batch_size: Histogram,
    /// Forward pass per batch.
    pub compute: Histogram,
    /// Requests past their deadline.
    pub deadline_drops: Counter,
    /// Requests whose caller had gone.
    pub abandoned: Counter,
}

impl VersionMetrics {
    /// The handles of `model` version `version`.
    pub fn new(model: &str, version: &str) -> Self {
        let labels = [("model", model.to_owned()), ("version", version.to_owned())];
        Self {
            batch_wait: metrics::histogram!(BATCH_WAIT, &labels),
            batch_size: metrics::histogram!(BATCH_SIZE, &labels),
            compute: metrics::histogram!(COMPUTE, &labels),
            deadline_drops: metrics::counter!(DEADLINE_DROPS, "model" => model.to_owned()),
            abandoned: metrics::counter!(ABANDONED, "model" => model.to_owned()),
        }
    }
}
