//! Where the emulated scalers read their metrics, the replicas take requests and the trace goes:
//! RabbitMQ, read through its management API as KEDA's `rabbitmq` scaler (`protocol: http`)
//! reads it, or Service Bus, read through queue runtime properties as KEDA's
//! `azure-servicebus` scaler reads them (a namespace from `EMBER_SERVICEBUS_CONNECTION_STRING`,
//! else a local test double of Service Bus's REST API).

use super::keda::{QueueStats, Scaler, Trigger};
use crate::load::{self, LoadReport, LoadSpec};
use anyhow::Context;
use ember::transport::Transport;
use ember::transport::servicebus::{ServiceBusConfig, ServiceBusTransport};
use servicebus_double::ServiceBusDouble;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A real namespace's connection string, as `ember` reads it.
const CONNECTION_STRING_ENV: &str = "EMBER_SERVICEBUS_CONNECTION_STRING";

/// How long a run waits for the queues to go quiet before it starts.
const QUIET_PATIENCE: Duration = Duration::from_secs(120);

/// A broker and how its scalers read it.
pub enum Broker {
    /// RabbitMQ: its AMQP URL and management API.
    RabbitMq {
        /// The AMQP URL.
        url: String,
        /// The management API.
        management: Management,
    },
    /// Service Bus (or its test double).
    ServiceBus {
        /// The client transport (traffic and runtime properties).
        transport: Arc<ServiceBusTransport>,
        /// What an `ember serve` needs in its environment to reach it.
        env: Vec<(String, String)>,
        /// Where it is, for the report.
        at: String,
    },
}

impl Broker {
    /// The broker `triggers` read: RabbitMQ at `url` with its management API at `management`,
    /// or Service Bus.
    pub fn for_triggers(triggers: &[Trigger], url: &str, management: &str) -> anyhow::Result<Self> {
        let scaler = triggers
            .iter()
            .map(|t| t.scaler)
            .find(|s| *s != Scaler::Prometheus)
            .context("no trigger reads a broker")?;
        Ok(match scaler {
            Scaler::RabbitMq | Scaler::Prometheus => Self::RabbitMq {
                url: url.to_owned(),
                management: Management::new(management, url)?,
            },
            Scaler::ServiceBus => {
                let connection = std::env::var(CONNECTION_STRING_ENV);
                let (config, mut env, at) = match connection {
                    Ok(connection) => {
                        let config = ServiceBusConfig::from_connection_string(&connection)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        let at = format!("Service Bus namespace {}", config.namespace);
                        let env = vec![(CONNECTION_STRING_ENV.to_owned(), connection)];
                        (config, env, at)
                    }
                    Err(_) => {
                        let double = ServiceBusDouble::start();
                        let mut config = ServiceBusConfig::new(
                            servicebus_double::NAMESPACE,
                            servicebus_double::KEY_NAME,
                            servicebus_double::KEY,
                        );
                        config.endpoint = Some(double.endpoint.parse()?);
                        let env = double.env().map(|(k, v)| (k.to_owned(), v)).to_vec();
                        let at = format!("the Service Bus test double at {}", double.endpoint);
                        (config, env, at)
                    }
                };
                env.push(("EMBER_TRANSPORT".to_owned(), "servicebus".to_owned()));
                Self::ServiceBus {
                    transport: Arc::new(ServiceBusTransport::new(config)),
                    env,
                    at,
                }
            }
        })
    }

    /// What an `ember serve` needs in its environment to reach the broker.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        match self {
            Self::RabbitMq { url, .. } => vec![
                ("EMBER_TRANSPORT".to_owned(), "amqp".to_owned()),
                ("EMBER_AMQP_URL".to_owned(), url.clone()),
            ],
            Self::ServiceBus { env, .. } => env.clone(),
        }
    }

    /// The broker, in words.
    pub fn describe(&self) -> String {
        match self {
            Self::RabbitMq { management, .. } => format!("RabbitMQ ({})", management.base),
            Self::ServiceBus { at, .. } => at.clone(),
        }
    }

    /// Whether request bodies may be binary.
    pub fn carries_binary(&self) -> bool {
        match self {
            Self::RabbitMq { .. } => true,
            Self::ServiceBus { transport, .. } => transport.carries_binary(),
        }
    }

    /// Offers the trace.
    pub async fn offer(&self, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
        match self {
            Self::RabbitMq { url, .. } => load::run(url, spec).await,
            Self::ServiceBus { transport, .. } => load::run_over(transport.clone(), spec).await,
        }
    }

    /// The queues of `triggers`, in order, as their scalers read them.
    pub async fn queues(&self, triggers: &[Trigger]) -> anyhow::Result<Vec<QueueStats>> {
        let mut stats = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            stats.push(match self {
                // Read from the workers, not the broker (the caller's part).
                _ if trigger.scaler == Scaler::Prometheus => QueueStats::default(),
                Self::RabbitMq { management, .. } => management.queue(&trigger.queue).await?,
                Self::ServiceBus { transport, .. } => QueueStats {
                    messages: transport
                        .active_messages(&trigger.queue)
                        .await
                        .with_context(|| format!("reading {}'s runtime properties", trigger.queue))?
                        .unwrap_or(0),
                    ..QueueStats::default()
                },
            });
        }
        Ok(stats)
    }

    /// Waits until no trigger is active (the run starts from zero replicas: a producer that just
    /// stopped leaves a publish rate that takes a few statistics intervals to decay).
    pub async fn quiet(&self, triggers: &[Trigger]) -> anyhow::Result<()> {
        let deadline = Instant::now() + QUIET_PATIENCE;
        loop {
            let stats = self.queues(triggers).await?;
            let busy: Vec<String> = triggers
                .iter()
                .zip(&stats)
                .filter(|(t, s)| t.active(**s))
                .map(|(t, s)| {
                    format!(
                        "{} ({} waiting, {:.1}/s published)",
                        t.queue, s.messages, s.publish_rate
                    )
                })
                .collect();
            if busy.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the queues are still in use after {QUIET_PATIENCE:?}, so the run cannot start from \
                 zero: {}",
                busy.join(", ")
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// RabbitMQ's management HTTP API, as KEDA's rabbitmq scaler (`protocol: http`) reads it.
pub struct Management {
    client: reqwest::Client,
    base: String,
    vhost: String,
    user: String,
    password: String,
}

impl Management {
    /// The API at `base`, with the credentials and vhost of the AMQP URL `amqp`.
    pub fn new(base: &str, amqp: &str) -> anyhow::Result<Self> {
        let uri: lapin::uri::AMQPUri = amqp
            .parse()
            .map_err(|e| anyhow::anyhow!("the AMQP URL: {e}"))?;
        // A path segment of the API: the vhost percent-encoded ("/" is "%2F").
        let vhost = uri
            .vhost
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>();
        let credentials = uri.authority.userinfo;
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            vhost,
            user: credentials.username,
            password: credentials.password,
        })
    }

    /// A queue's messages (ready + unacknowledged) and publish rate; zeros while it does not
    /// exist.
    pub async fn queue(&self, name: &str) -> anyhow::Result<QueueStats> {
        let url = format!("{}/api/queues/{}/{name}", self.base, self.vhost);
        let response = self
            .client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .with_context(|| format!("asking RabbitMQ's management API ({url}): is the rabbitmq_management plugin enabled?"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(QueueStats::default());
        }
        let response = response
            .error_for_status()
            .with_context(|| format!("asking {url}"))?;
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
        Ok(QueueStats {
            messages: body["messages"].as_u64().unwrap_or(0),
            publish_rate: body["message_stats"]["publish_details"]["rate"]
                .as_f64()
                .unwrap_or(0.0),
            ..QueueStats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_takes_credentials_and_vhost_from_the_amqp_url() {
        let read = |url: &str| {
            let m = Management::new("http://h:15672/", url).unwrap();
            (m.base, m.vhost, m.user, m.password)
        };
        assert_eq!(
            read("amqp://127.0.0.1:5672"),
            (
                "http://h:15672".into(),
                "%2F".into(),
                "guest".into(),
                "guest".into()
            )
        );
        assert_eq!(
            read("amqps://ember%40prod:p%2Fw%3Ad@rabbit:5671/prod"),
            (
                "http://h:15672".into(),
                "prod".into(),
                "ember@prod".into(),
                "p/w:d".into()
            )
        );
        assert_eq!(read("amqp://u:p@rabbit/%2Fa%20b").1, "%2Fa%20b");
        assert!(Management::new("http://h", "http://not-amqp").is_err());
    }
}
