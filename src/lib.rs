//! Ember: event-driven ML inference. Requests arrive on a queue ([`transport`]), are decoded
//! and validated ([`protocol`]), batched per model version ([`batcher`]), computed by Burn
//! models ([`runtime`], [`models`]) loaded from a verified repository ([`store`]), and answered
//! ([`results`]) before their delivery is acknowledged. [`worker`] wires the stages together.

pub mod batcher;
pub mod cli;
pub mod client;
pub mod demo;
pub mod gateway;
pub mod import;
pub mod models;
pub mod protocol;
pub mod registry;
pub mod results;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod transport;
pub mod worker;
