//! The in-process transport: a tiny broker with the semantics of the real ones (durable until
//! acked, requeue on drop, dead-lettering with a reason, prefetch). The embedded default.

use super::{
    ClientTransport, Delivery, Inbox, InboxSender, Message, Settle, Subscription, Transport,
    TransportError, queues,
};
use crate::protocol::ErrorCode;
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// An in-memory broker; clones share it.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
}

#[derive(Default)]
struct Broker {
    queues: Mutex<HashMap<String, VecDeque<Stored>>>,
    changed: Notify,
    closed: AtomicBool,
    inboxes: AtomicU64,
}

struct Stored {
    message: Message,
    redeliveries: u32,
}

impl Broker {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Stored>>> {
        // A panic while holding this lock cannot leave a queue half-updated (each operation is
        // one push or pop), so a poisoned lock is still sound to use.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, queue: &str, stored: Stored, front: bool) {
        {
            let mut queues = self.queues();
            let q = queues.entry(queue.to_owned()).or_default();
            if front {
                q.push_front(stored)
            } else {
                q.push_back(stored)
            }
        }
        self.changed.notify_waiters();
    }

    fn pop_first(&self, names: &[String]) -> Option<(String, Stored)> {
        let mut queues = self.queues();
        names
            .iter()
            .find_map(|name| Some((name.clone(), queues.get_mut(name)?.pop_front()?)))
    }
}

impl MemoryTransport {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages ready in `queue` (not counting unsettled deliveries).
    pub fn depth(&self, queue: &str) -> usize {
        self.broker.queues().get(queue).map_or(0, VecDeque::len)
    }

    /// Stops every subscription: their `next` returns `None`. Unsettled deliveries stay
    /// settleable; unacked ones are kept.
    pub fn close(&self) {
        self.broker.closed.store(true, Ordering::SeqCst);
        self.broker.changed.notify_waiters();
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn declare(&self, _model: &str) -> Result<(), TransportError> {
        Ok(())
    }

    async fn publish(&self, queue: &str, message: Message) -> Result<(), TransportError> {
        if self.broker.closed.load(Ordering::SeqCst) {
            return Err(TransportError::unavailable("memory transport is closed"));
        }
        let stored = Stored {
            message,
            redeliveries: 0,
        };
        self.broker.push(queue, stored, false);
        Ok(())
    }

    async fn subscribe(
        &self,
        queues: &[String],
        prefetch: usize,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        Ok(Box::new(MemorySubscription {
            broker: self.broker.clone(),
            queues: queues.to_vec(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            stopped: false,
        }))
    }
}

#[async_trait]
impl ClientTransport for MemoryTransport {
    async fn inbox(&self) -> Result<Inbox, TransportError> {
        let n = self.broker.inboxes.fetch_add(1, Ordering::Relaxed);
        let queue = format!("ember.inbox.{n}");
        let subscription = self.subscribe(std::slice::from_ref(&queue), 1024).await?;
        let replies = futures::stream::unfold(subscription, |mut subscription| async move {
            let delivery = subscription.next().await?;
            // An inbox is not durable: taking an answer is receiving it.
            let _ = delivery.settle.ack().await;
            Some((delivery.message, subscription))
        });
        let sender = MemoryInboxSender {
            transport: self.clone(),
            queue,
        };
        Ok(Inbox {
            sender: Arc::new(sender),
            replies: replies.boxed(),
        })
    }

    async fn declare_queue(
        &self,
        queue: &str,
        _expiry: Option<Duration>,
    ) -> Result<(), TransportError> {
        self.broker.queues().entry(queue.to_owned()).or_default();
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), TransportError> {
        self.broker.queues().remove(queue);
        Ok(())
    }
}

struct MemoryInboxSender {
    transport: MemoryTransport,
    queue: String,
}

impl Drop for MemoryInboxSender {
    fn drop(&mut self) {
        self.transport.broker.queues().remove(&self.queue);
    }
}

#[async_trait]
impl InboxSender for MemoryInboxSender {
    async fn send(&self, queue: &str, mut message: Message) -> Result<(), TransportError> {
        message.properties.reply_to = Some(self.queue.clone());
        self.transport.publish(queue, message).await
    }
}

struct MemorySubscription {
    broker: Arc<Broker>,
    queues: Vec<String>,
    permits: Arc<Semaphore>,
    stopped: bool,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn stop(&mut self) {
        self.stopped = true;
    }

    async fn next(&mut self) -> Option<Delivery> {
        if self.stopped {
            return None;
        }
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok()?,
            () = closed(&self.broker) => return None,
        };
        loop {
            let changed = self.broker.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.broker.closed.load(Ordering::SeqCst) {
                return None;
            }
            if let Some((queue, stored)) = self.broker.pop_first(&self.queues) {
                return Some(Delivery {
                    message: stored.message.clone(),
                    queue: queue.clone(),
                    redeliveries: stored.redeliveries,
                    settle: Box::new(MemorySettle {
                        broker: self.broker.clone(),
                        queue,
                        stored: Some(stored),
                        _permit: permit,
                    }),
                });
            }
            changed.await;
        }
    }
}

async fn closed(broker: &Broker) {
    loop {
        let changed = broker.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if broker.closed.load(Ordering::SeqCst) {
            return;
        }
        changed.await;
    }
}

struct MemorySettle {
    broker: Arc<Broker>,
    queue: String,
    stored: Option<Stored>,
    _permit: OwnedSemaphorePermit,
}

impl MemorySettle {
    fn requeue_now(&mut self) {
        if let Some(mut stored) = self.stored.take() {
            stored.redeliveries += 1;
            self.broker.push(&self.queue, stored, true);
        }
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        self.requeue_now();
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.stored = None;
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), TransportError> {
        self.requeue_now();
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), TransportError> {
        if let Some(mut stored) = self.stored.take() {
            stored.message.properties.error_code = Some(code);
            stored.message.properties.error = Some(reason.to_owned());
            self.broker
                .push(&queues::dead_for(&self.queue), stored, false);
        }
        Ok(())
    }
}
