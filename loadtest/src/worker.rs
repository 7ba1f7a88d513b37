//! The Ember workers under test: `ember serve` processes started with the given flags, ready
//! once they log "worker ready", stopped with SIGTERM (a graceful drain).

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `ember serve`.
pub struct Worker {
    child: Child,
    /// Its telemetry endpoint (`http://host:port`, serving `/metrics`), as it logged it.
    pub telemetry: Option<String>,
}

/// Where the `ember` binary is: `--ember-bin`, else beside this executable (same profile).
pub fn ember_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?.with_file_name("ember"),
    };
    anyhow::ensure!(
        path.is_file(),
        "no ember binary at {} (build it: cargo build --release -p ember, or pass --ember-bin)",
        path.display()
    );
    Ok(path)
}

/// Reads a process's resident memory and CPU use from `/proc` (Linux).
pub struct Probe {
    pid: u32,
    last_cpu: Option<(Instant, f64)>,
}

impl Probe {
    /// A probe of process `pid`, its CPU time counted from now (so the first read, even of a
    /// run shorter than the sampling interval, has cores).
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            last_cpu: cpu_seconds(pid).map(|cpu| (Instant::now(), cpu)),
        }
    }

    /// Resident memory now (bytes), and the cores kept busy since the previous read.
    pub fn read(&mut self) -> (Option<u64>, Option<f64>) {
        let now = Instant::now();
        let cpu = cpu_seconds(self.pid);
        let cores = match (self.last_cpu, cpu) {
            (Some((then, before)), Some(after)) => {
                Some((after - before) / now.duration_since(then).as_secs_f64().max(1e-3))
            }
            _ => None,
        };
        self.last_cpu = cpu.map(|c| (now, c));
        (rss_bytes(self.pid), cores)
    }
}

impl Probe {
    /// Entries of `/proc/<pid>/fd`: files, sockets and pipes the process holds open.
    pub fn open_fds(&self) -> Option<u64> {
        let entries = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?;
        Some(entries.count() as u64)
    }
}

/// `VmRSS` of `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// User + system CPU time of all of `pid`'s threads (`/proc/<pid>/stat` fields 14 and 15, in
/// USER_HZ = 100 ticks per second, as on every Linux architecture Ember targets).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), starting at field 3.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

impl Worker {
    /// Starts `ember serve --transport amqp` with `args` and waits until it is ready.
    pub async fn start(ember: &Path, amqp_url: &str, args: &[&str]) -> anyhow::Result<Self> {
        let env = [("EMBER_TRANSPORT", "amqp"), ("EMBER_AMQP_URL", amqp_url)]
            .map(|(name, value)| (name.to_owned(), value.to_owned()));
        Self::start_with(ember, &env, args).await
    }

    /// Starts `ember serve` with `args` and `env` (the broker's settings) and waits until it is
    /// ready.
    pub async fn start_with(
        ember: &Path,
        env: &[(String, String)],
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(ember)
            .arg("serve")
            .args(args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("EMBER_METRICS_ADDR", "127.0.0.1:0")
            .env("EMBER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", ember.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut said = Vec::new();
        let mut telemetry = None;
        let ready = async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("worker ready") {
                    return Ok(true);
                }
                if line.contains("telemetry listening") {
                    telemetry = line
                        .split_whitespace()
                        .find_map(|field| field.strip_prefix("url="))
                        .map(|url| url.trim_matches('"').to_owned());
                }
                said.push(line);
            }
            Ok::<_, std::io::Error>(false)
        };
        let ready = tokio::time::timeout(Duration::from_secs(120), ready)
            .await
            .context("ember serve was not ready within 120 s")??;
        anyhow::ensure!(
            ready,
            "ember serve {args:?} exited before it was ready:\n{}",
            said.join("\n")
        );
        // Keep draining its log so it never blocks on a full pipe; pass errors on.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("ember serve: {line}");
                }
            }
        });
        Ok(Self { child, telemetry })
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until it exits on its own; true if it exited 0.
    pub async fn exited(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.wait().await?.success())
    }

    /// SIGTERM, then waits for the drain; true if it exited 0.
    pub async fn stop(mut self) -> anyhow::Result<bool> {
        if let Some(pid) = self.pid() {
            Command::new("kill").arg(pid.to_string()).status().await?;
        }
        Ok(self.child.wait().await?.success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_this_process_memory_and_cpu() {
        let mut probe = Probe::new(std::process::id());
        let held = std::hint::black_box(vec![1u8; 64 << 20]);
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (rss, cores) = probe.read();
        assert!(
            rss.unwrap() >= 64 << 20,
            "{rss:?} bytes with 64 MiB touched"
        );
        // At least the spinning thread, however busy the machine, and at most every core.
        let cores = cores.unwrap();
        let most = std::thread::available_parallelism().unwrap().get() as f64 + 0.1;
        assert!(
            (0.2..=most).contains(&cores),
            "one spinning thread: {cores} cores"
        );
        drop(held);
        assert_eq!(Probe::new(u32::MAX).read(), (None, None));
    }
}
