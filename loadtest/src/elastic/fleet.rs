//! The replicas the emulated controller asks for, as real `ember serve` processes: each starts
//! after the pod-start delay and, when removed, gets SIGTERM and then SIGKILL after the grace
//! period, as the kubelet does.

use crate::worker::Worker;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What happened to one pod, in seconds since the run began (real time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PodLife {
    /// The controller asked for it.
    pub requested_s: f64,
    /// Its container started (`ember serve` spawned).
    pub spawned_s: Option<f64>,
    /// `ember serve` said it was ready.
    pub ready_s: Option<f64>,
    /// The controller removed it (SIGTERM).
    pub stopped_s: Option<f64>,
    /// Its process ended (or it was removed before it started).
    pub exited_s: Option<f64>,
    /// Killed with SIGKILL after the grace period, or exited with an error.
    pub killed: bool,
    /// Why it failed to start, if it did.
    pub error: Option<String>,
    /// Its telemetry endpoint (`/metrics`).
    pub telemetry: Option<String>,
}

/// How the fleet's pods run.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The `ember` binary.
    pub ember: PathBuf,
    /// The environment reaching the broker (`EMBER_TRANSPORT` and its settings).
    pub env: Vec<(String, String)>,
    /// `ember serve` flags.
    pub args: Vec<String>,
    /// Where each pod gets its own empty weight cache (`--cache-dir <caches>/pod-<n>`).
    pub caches: PathBuf,
    /// Delay before the container starts (image pull, scheduling), real time.
    pub start_delay: Duration,
    /// SIGTERM to SIGKILL, real time.
    pub grace: Duration,
}

struct Pod {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The pods of one scale target.
pub struct Fleet {
    spec: PodSpec,
    started: Instant,
    lives: Arc<Mutex<Vec<PodLife>>>,
    /// Running pods, oldest first.
    pods: Vec<(usize, Pod)>,
    /// Tasks of removed pods, still draining.
    retired: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// No pods yet; times count from `started`.
    pub fn new(spec: PodSpec, started: Instant) -> Self {
        Self {
            spec,
            started,
            lives: Arc::default(),
            pods: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// How its pods run.
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    /// Pods started and not yet exited (removed ones still draining included), and of those
    /// the ones not ready yet: a ScaledJob's running and pending Jobs.
    pub fn running_and_pending(&self) -> (u32, u32) {
        let lives = self.lives.lock().unwrap();
        let running = lives.iter().filter(|l| l.exited_s.is_none());
        let pending = running.clone().filter(|l| l.ready_s.is_none()).count();
        (running.count() as u32, pending as u32)
    }

    /// Pods ready and not removed.
    pub fn ready(&self) -> usize {
        let lives = self.lives.lock().unwrap();
        self.pods
            .iter()
            .filter(|(id, _)| lives[*id].ready_s.is_some())
            .count()
    }

    /// The telemetry endpoints of the pods ready and not removed (what a Service's endpoints
    /// list, so what Prometheus scrapes), with their pod numbers.
    pub fn scrape_targets(&self) -> Vec<(usize, String)> {
        let lives = self.lives.lock().unwrap();
        self.pods
            .iter()
            .filter(|(id, _)| lives[*id].ready_s.is_some())
            .filter_map(|(id, _)| Some((*id, lives[*id].telemetry.clone()?)))
            .collect()
    }

    /// Adds or removes pods to reach `replicas`; removes the newest first (the ReplicaSet
    /// controller prefers pods not yet ready, then the most recently started).
    pub fn scale(&mut self, replicas: usize) {
        while self.pods.len() < replicas {
            self.add();
        }
        while self.pods.len() > replicas {
            let (_, mut pod) = self.pods.pop().expect("not empty");
            if let Some(stop) = pod.stop.take() {
                let _ = stop.send(());
            }
            // The task ends on its own; `finish` waits for every task.
            self.retired.push(pod.task);
        }
    }

    /// Adds a pod (a Job's: it exits on its own).
    pub fn add(&mut self) {
        let id = {
            let mut lives = self.lives.lock().unwrap();
            lives.push(PodLife {
                requested_s: self.started.elapsed().as_secs_f64(),
                ..PodLife::default()
            });
            lives.len() - 1
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(live(
            self.spec.clone(),
            self.started,
            self.lives.clone(),
            id,
            stopped,
        ));
        self.pods.push((
            id,
            Pod {
                stop: Some(stop),
                task,
            },
        ));
    }

    /// Removes every pod, waits for each to exit, and returns what happened to all of them.
    pub async fn finish(mut self) -> Vec<PodLife> {
        self.scale(0);
        for task in self.retired.drain(..) {
            let _ = task.await;
        }
        self.lives.lock().unwrap().clone()
    }
}

/// One pod's life: wait for the start delay, run `ember serve` until stopped, then SIGTERM
/// and SIGKILL after the grace period.
async fn live(
    spec: PodSpec,
    started: Instant,
    lives: Arc<Mutex<Vec<PodLife>>>,
    id: usize,
    mut stopped: oneshot::Receiver<()>,
) {
    let now = || started.elapsed().as_secs_f64();
    let record = |f: &dyn Fn(&mut PodLife)| f(&mut lives.lock().unwrap()[id]);
    tokio::select! {
        _ = tokio::time::sleep(spec.start_delay) => {}
        _ = &mut stopped => {
            let t = now();
            record(&|l| (l.stopped_s, l.exited_s) = (Some(t), Some(t)));
            return;
        }
    }
    let t = now();
    record(&|l| l.spawned_s = Some(t));
    let cache = spec.caches.join(format!("pod-{id}")).display().to_string();
    let args: Vec<&str> = spec
        .args
        .iter()
        .map(String::as_str)
        .chain(["--cache-dir", &cache])
        .collect();
    let mut worker = match Worker::start_with(&spec.ember, &spec.env, &args).await {
        Ok(worker) => worker,
        Err(e) => {
            let (t, error) = (now(), format!("{e:#}"));
            record(&|l| (l.exited_s, l.error) = (Some(t), Some(error.clone())));
            return;
        }
    };
    let t = now();
    record(&|l| (l.ready_s, l.telemetry) = (Some(t), worker.telemetry.clone()));
    tokio::select! {
        _ = &mut stopped => {}
        // A Job's worker exits once idle (`--exit-when-idle`).
        exited = worker.exited() => {
            let (t, clean) = (now(), matches!(exited, Ok(true)));
            record(&|l| (l.exited_s, l.killed) = (Some(t), !clean));
            return;
        }
    }
    let t = now();
    record(&|l| l.stopped_s = Some(t));
    // Dropping the worker on timeout kills it (SIGKILL).
    let clean = matches!(
        tokio::time::timeout(spec.grace, worker.stop()).await,
        Ok(Ok(true))
    );
    let t = now();
    record(&|l| (l.exited_s, l.killed) = (Some(t), !clean));
}
