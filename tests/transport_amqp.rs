//! The transport suite against a real RabbitMQ (`EMBER_AMQP_URL`, default the local broker),
//! once with quorum queues (the default) and once with classic queues. Queues expire a minute
//! after the run.

mod transport_suite;

use ember::transport::amqp::{AmqpConfig, AmqpTransport, QueueType};
use std::time::Duration;

async fn broker(queue_type: QueueType) -> AmqpTransport {
    let url = std::env::var("EMBER_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let config = AmqpConfig {
        queue_type,
        queue_expiry: Some(Duration::from_secs(60)),
        ..AmqpConfig::new(url)
    };
    AmqpTransport::connect(config)
        .await
        .expect("RabbitMQ at EMBER_AMQP_URL (bash .ci/run starts one)")
}

mod quorum {
    use super::*;
    transport_suite!(broker(QueueType::Quorum));
}

mod classic {
    use super::*;
    transport_suite!(broker(QueueType::Classic));
}
