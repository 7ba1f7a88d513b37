//! The Ember workers under test: `ember serve` processes started with the given flags, ready
//! once they log "worker ready", stopped with SIGTERM (a graceful drain).

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `ember serve`.
pub struct Worker {
    child: Child,
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

impl Worker {
    /// Starts `ember serve --transport amqp` with `args` and waits until it is ready.
    pub async fn start(ember: &Path, amqp_url: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(ember)
            .arg("serve")
            .args(["--transport", "amqp"])
            .args(args)
            .env("EMBER_AMQP_URL", amqp_url)
            .env("EMBER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", ember.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("worker ready") {
                    return Ok(true);
                }
                if line.contains("ERROR") {
                    eprintln!("ember serve: {line}");
                }
            }
            Ok::<_, std::io::Error>(false)
        };
        let ready = tokio::time::timeout(Duration::from_secs(120), ready)
            .await
            .context("ember serve was not ready within 120 s")??;
        anyhow::ensure!(ready, "ember serve {args:?} exited before it was ready");
        // Keep draining its log so it never blocks on a full pipe; pass errors on.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("ember serve: {line}");
                }
            }
        });
        Ok(Self { child })
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, then waits for the drain; true if it exited 0.
    pub async fn stop(mut self) -> anyhow::Result<bool> {
        if let Some(pid) = self.pid() {
            Command::new("kill").arg(pid.to_string()).status().await?;
        }
        Ok(self.child.wait().await?.success())
    }
}
