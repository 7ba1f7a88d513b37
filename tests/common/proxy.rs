//! A TCP proxy that injects real network faults between a client and a real server: cut a
//! connection after N bytes, go down (drop every connection, refuse new ones) and come back,
//! add latency, or black-hole (keep connections open, pass nothing on).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to one upstream address.
pub struct FaultProxy {
    /// Where clients connect.
    pub port: u16,
    state: Arc<State>,
}

struct State {
    upstream: String,
    /// Bytes sent to clients so far.
    forwarded: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// The next connection is cut after this many bytes to the client (0: none).
    cut_next_after: AtomicU64,
    /// Goes down by itself once this many bytes were forwarded in all (0: never).
    down_after: AtomicU64,
    up: AtomicBool,
    down_signal: watch::Sender<u64>,
    /// Delay before each chunk is passed on, either way, in ms.
    latency_ms: AtomicU64,
    /// While set, nothing is passed on either way; connections stay open.
    black_hole: AtomicBool,
}

impl FaultProxy {
    /// Starts a proxy on a free local port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            forwarded: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            cut_next_after: AtomicU64::new(0),
            down_after: AtomicU64::new(0),
            up: AtomicBool::new(true),
            down_signal: watch::channel(0).0,
            latency_ms: AtomicU64::new(0),
            black_hole: AtomicBool::new(false),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.up.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                let cut = accepting.cut_next_after.swap(0, Ordering::SeqCst);
                tokio::spawn(relay(accepting.clone(), client, cut));
            }
        });
        Self { port, state }
    }

    /// Bytes forwarded to clients so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Cuts the next connection once it has sent `bytes` to its client.
    pub fn cut_next_after(&self, bytes: u64) {
        self.state.cut_next_after.store(bytes, Ordering::SeqCst);
    }

    /// Drops every open connection and refuses new ones until [`FaultProxy::up`].
    pub fn down(&self) {
        self.state.go_down();
    }

    /// Goes [`down`](Self::down) by itself the moment `bytes` have been forwarded in all,
    /// however fast the transfer (a test polling [`forwarded`](Self::forwarded) may be late).
    pub fn down_after(&self, bytes: u64) {
        self.state.down_after.store(bytes, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Delays every chunk by `latency`, either way (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        let ms = latency.as_millis() as u64;
        self.state.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Passes nothing on, either way, while `on`, without closing any connection.
    pub fn black_hole(&self, on: bool) {
        self.state.black_hole.store(on, Ordering::SeqCst);
    }
}

impl State {
    fn go_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.down_signal.send_modify(|n| *n += 1);
    }
}

async fn relay(state: Arc<State>, mut client: TcpStream, cut_after: u64) {
    let Ok(mut server) = TcpStream::connect(&state.upstream).await else {
        return;
    };
    let mut down = state.down_signal.subscribe();
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::select! {
        _ = pump(&state, client_read, server_write, None) => {}
        _ = pump(&state, server_read, client_write, Some(cut_after)) => {}
        _ = down.changed() => {}
    }
}

/// Passes bytes from `from` to `to` through the faults set; `downstream` (to the client, with
/// its cut) counts what is forwarded.
async fn pump(
    state: &State,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    downstream: Option<u64>,
) -> std::io::Result<()> {
    let cut_after = downstream.unwrap_or(0);
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let latency = state.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        while state.black_hole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = if cut_after > 0 {
            (n as u64).min(cut_after - sent) as usize
        } else {
            n
        };
        to.write_all(&buf[..n]).await?;
        sent += n as u64;
        if downstream.is_some() {
            let total = state.forwarded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let down_after = state.down_after.load(Ordering::SeqCst);
            if down_after > 0 && total >= down_after {
                state.go_down();
            }
        }
        if cut_after > 0 && sent >= cut_after {
            return Ok(()); // cut: both halves are dropped by the caller
        }
    }
}
