//! The Service Bus REST API test double (crate `servicebus-double`) and Ember's transport
//! config for it.

pub use servicebus_double::{KEY, KEY_NAME, NAMESPACE, ServiceBusDouble};
use std::time::Duration;

/// A transport config for `double`: its namespace and policy, requests sent to it.
pub fn config(double: &ServiceBusDouble) -> ember::transport::servicebus::ServiceBusConfig {
    let mut config = ember::transport::servicebus::ServiceBusConfig::new(NAMESPACE, KEY_NAME, KEY);
    config.endpoint = Some(double.endpoint.parse().unwrap());
    config.poll = Duration::from_secs(1);
    config
}
