//! The transport suite against a real RabbitMQ (`EMBER_AMQP_URL`, default the local broker),
//! once with quorum queues (the default) and once with classic queues. Queues expire a minute
//! after the run.

mod common;
mod transport_suite;

use ember::transport::amqp::{AmqpConfig, AmqpTransport, QueueType};
use std::time::Duration;

async fn broker(queue_type: QueueType) -> AmqpTransport {
    common::broker(|config| AmqpConfig {
        queue_type,
        queue_expiry: Some(Duration::from_secs(60)),
        ..config
    })
    .await
}

mod quorum {
    use super::*;
    transport_suite!(broker(QueueType::Quorum));
}

mod classic {
    use super::*;
    transport_suite!(broker(QueueType::Classic));
}
