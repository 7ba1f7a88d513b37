//! The Service Bus transport against **real Azure Service Bus**: the shared transport suite on
//! a namespace given by `EMBER_TEST_SERVICEBUS_CONNECTION_STRING` (a policy with Manage rights;
//! the test creates and deletes its own queues).
//!
//! Without that variable the test is reported as ignored, never as passed: run it with
//! `cargo test --test servicebus_live -- --ignored` (`.ci/run` does when the variable is set).

mod transport_suite;

use ember::transport::ClientTransport;
use ember::transport::servicebus::{ServiceBusConfig, ServiceBusTransport};

const CONNECTION_STRING: &str = "EMBER_TEST_SERVICEBUS_CONNECTION_STRING";

fn transport() -> ServiceBusTransport {
    let connection = std::env::var(CONNECTION_STRING)
        .unwrap_or_else(|_| panic!("set {CONNECTION_STRING} to run the live test"));
    ServiceBusTransport::new(ServiceBusConfig::from_connection_string(&connection).unwrap())
}

#[tokio::test]
#[ignore = "needs EMBER_TEST_SERVICEBUS_CONNECTION_STRING (real Azure Service Bus)"]
async fn the_transport_suite_passes_on_azure_service_bus() {
    use transport_suite::*;
    round_trip_preserves_body_and_properties(transport()).await;
    ack_removes_the_message(transport()).await;
    requeue_redelivers_with_a_count(transport()).await;
    unsettled_delivery_is_redelivered_when_dropped(transport()).await;
    dead_letter_carries_the_reason(transport()).await;
    earlier_queues_are_drained_first(transport()).await;
    prefetch_bounds_unsettled_deliveries(transport()).await;
    stop_ends_the_subscription_and_leaves_the_rest_queued(transport()).await;
    // Each case made one model, `suite-<case>-<pid>-<n>` in order: delete their queues.
    let t = transport();
    let cases = [
        "roundtrip",
        "ack",
        "requeue",
        "drop",
        "dead",
        "priority",
        "prefetch",
        "stop",
    ];
    for (n, case) in cases.iter().enumerate() {
        let model = format!("suite-{case}-{}-{n}", std::process::id());
        for queue in ember::transport::queues::all(&model) {
            t.delete_queue(&queue).await.unwrap();
        }
    }
}
