//! A private RabbitMQ node for the tests that change the broker itself (a TLS listener, a
//! full restart, a crash): its own name, ports, data and cookie, so the shared broker on 5672
//! and the other tests never notice. Started from the installed RabbitMQ (as `.ci/run`
//! installs it); stopped when dropped.

use super::free_port;
use super::tls::Certificates;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running private node.
pub struct RabbitNode {
    dir: tempfile::TempDir,
    name: String,
    /// Port of the plain AMQP listener (`None` when only TLS is offered).
    pub amqp_port: Option<u16>,
    /// Port of the TLS listener, with the certificates it presents.
    pub tls: Option<(u16, Certificates)>,
}

impl RabbitNode {
    /// Starts a node with a plain AMQP listener.
    pub fn plain() -> Self {
        Self::start(false)
    }

    /// Starts a node that offers AMQP only over TLS, with a certificate for `localhost`
    /// signed by a CA made for it.
    pub fn tls_only() -> Self {
        Self::start(true)
    }

    fn start(tls: bool) -> Self {
        static NODES: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::tempdir().unwrap();
        let name = format!(
            "ember-test-{}-{}@localhost",
            std::process::id(),
            NODES.fetch_add(1, Ordering::Relaxed)
        );
        let mut config = String::from("loopback_users = none\n");
        let amqp_port = if tls {
            config.push_str("listeners.tcp = none\n");
            None
        } else {
            let port = free_port();
            config.push_str(&format!("listeners.tcp.default = 127.0.0.1:{port}\n"));
            Some(port)
        };
        let tls = tls.then(|| {
            let port = free_port();
            let certificates = Certificates::for_localhost(dir.path());
            config.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                certificates.ca.display(),
                certificates.server.display(),
                certificates.key.display()
            ));
            (port, certificates)
        });
        std::fs::write(dir.path().join("rabbitmq.conf"), config).unwrap();
        std::fs::write(dir.path().join("env.conf"), "").unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let node = Self {
            dir,
            name,
            amqp_port,
            tls,
        };
        node.boot();
        node
    }

    /// `amqp://` URL of the plain listener.
    pub fn url(&self) -> String {
        let port = self.amqp_port.expect("a node with a plain listener");
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// `amqps://` URL of the TLS listener, reached as `host` (the certificate names
    /// `localhost`).
    pub fn tls_url(&self, host: &str) -> String {
        let (port, _) = self.tls.as_ref().expect("a node with TLS");
        format!("amqps://guest:guest@{host}:{port}/%2f")
    }

    /// Starts the node (again, on the same data after `stop` or `kill`) and waits until it
    /// serves.
    pub fn boot(&self) {
        let status = self
            .command(&server_program())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .arg("-detached")
            .stdout(Stdio::null())
            .status()
            .expect("rabbitmq-server (bash .ci/run installs RabbitMQ)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let pid_file = self.pid_file();
        if let Err(output) = self.ctl(&["wait", pid_file.to_str().unwrap(), "--timeout", "120"]) {
            panic!("{output}\nnode log:\n{}", self.log());
        }
    }

    /// A full, orderly shutdown of the node and its runtime, as a service restart does;
    /// returns when the process has ended.
    pub fn stop(&self) {
        let pid_file = self.pid_file();
        self.ctl(&["stop", pid_file.to_str().unwrap()])
            .unwrap_or_else(|output| panic!("{output}"));
    }

    /// Kills the node's runtime with SIGKILL (a crash: nothing is flushed or closed) and waits
    /// until it is gone.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.pid_file()).unwrap();
        let pid = pid.trim();
        assert!(
            Command::new("kill")
                .args(["-9", pid])
                .status()
                .unwrap()
                .success()
        );
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `rabbitmqctl -n <this node> args...`: its output, or an explanation of its failure.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let output = self
            .command(&ctl_program())
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("rabbitmqctl");
        let text = |output: &Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        };
        if output.status.success() {
            Ok(text(&output))
        } else {
            Err(format!(
                "rabbitmqctl {args:?}: {}\n{}",
                output.status,
                text(&output)
            ))
        }
    }

    fn command(&self, program: &Path) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new(program);
        command
            .env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"));
        command
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("node.pid")
    }

    fn log(&self) -> String {
        let path = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.name));
        std::fs::read_to_string(&path).unwrap_or_else(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if self
            .ctl(&["stop", self.pid_file().to_str().unwrap()])
            .is_err()
        {
            // Not running (killed by the test), or not answering: make sure it is gone.
            if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

/// The server's own script: Debian's `rabbitmq-server` wrapper would switch to the
/// `rabbitmq` user, who cannot write this node's directory.
fn server_program() -> PathBuf {
    installed("rabbitmq-server")
}

fn ctl_program() -> PathBuf {
    installed("rabbitmqctl")
}

fn installed(script: &str) -> PathBuf {
    let own = Path::new("/usr/lib/rabbitmq/bin").join(script);
    if own.exists() { own } else { script.into() }
}
