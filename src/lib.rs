//! Ember: event-driven ML inference. Requests arrive on a queue ([`transport`]), are decoded
//! and validated ([`protocol`]), batched per model version ([`batcher`]), computed by Burn
//! models ([`runtime`], [`models`]) loaded from a verified repository ([`store`]), and answered
//! ([`results`]) before their delivery is acknowledged. [`worker`] wires the stages together.
//!
//! The wire protocol, the transports and the client library are the `ember-client` crate
//! (what a producer depends on, without Burn or the model store), re-exported here.

/// The client library: the `ember-client` crate.
pub use ember_client as client;
pub use ember_client::{protocol, secret, transport};

pub mod batcher;
pub mod cli;
pub mod demo;
pub mod gateway;
pub mod import;
pub mod models;
pub mod registry;
pub mod results;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod worker;
