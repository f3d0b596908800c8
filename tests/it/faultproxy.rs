//! A TCP fault proxy of the tests' own: it listens on 127.0.0.1 in front of Dovecot's IMAPS port
//! and forwards bytes both ways untouched, so TLS passes through and the certificate still names
//! the server (`localhost`). On command it breaks connections the way networks do: it cuts one
//! (a TCP reset) or stalls it (holds it open, forwarding nothing more) once the server has sent N
//! bytes on it, and it can close every connection a given time after it opened, as Exchange does
//! when the token a session logged in with expires.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to one connection once the server has sent `after` bytes on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward nothing more and reset both sides (RST).
    Cut { after: u64 },
    /// Forward nothing more but keep both sides open, until the client gives up.
    Stall { after: u64 },
}

impl Fault {
    fn after(self) -> u64 {
        match self {
            Fault::Cut { after } | Fault::Stall { after } => after,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// One entry per coming connection, in order of arrival (`None`: it passes).
    plan: Mutex<VecDeque<Option<Fault>>>,
    /// Every connection is closed this long after it opened.
    lifetime: Mutex<Option<Duration>>,
    /// Each chunk from the server is held this long first (a slow link).
    latency: Mutex<Duration>,
    connections: AtomicUsize,
    faults_done: AtomicUsize,
    /// Connections still open (neither side had closed) when their lifetime ran out.
    closed_at_lifetime: AtomicUsize,
}

/// The proxy; it stops accepting when dropped.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let fault = shared.plan.lock().unwrap().pop_front().flatten();
                    tokio::spawn(forward(client, upstream, fault, Arc::clone(&shared)));
                }
            }
        });
        FaultProxy {
            port,
            shared,
            accept,
        }
    }

    /// The next connections, one each, get these faults (`None` passes one untouched).
    pub fn plan(&self, faults: &[Option<Fault>]) {
        self.shared
            .plan
            .lock()
            .unwrap()
            .extend(faults.iter().copied());
    }

    /// Closes every connection (from now on) `lifetime` after it opened.
    pub fn close_each_after(&self, lifetime: Duration) {
        *self.shared.lifetime.lock().unwrap() = Some(lifetime);
    }

    /// Holds each chunk the server sends for `latency` before passing it on.
    pub fn delay_server_chunks(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many planned faults have struck.
    pub fn faults_done(&self) -> usize {
        self.shared.faults_done.load(Ordering::SeqCst)
    }

    /// How many connections were still open when their lifetime ran out (and were closed then).
    pub fn closed_at_lifetime(&self) -> usize {
        self.shared.closed_at_lifetime.load(Ordering::SeqCst)
    }

    /// Planned faults that have not struck yet.
    pub fn faults_pending(&self) -> usize {
        self.shared
            .plan
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.is_some())
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Resets a connection (SO_LINGER 0, then close) rather than ending it politely.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn forward(client: TcpStream, upstream: u16, fault: Option<Fault>, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        reset(client);
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
        // Every close is a reset (SO_LINGER 0), as a cut connection looks.
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    }
    let lifetime = *shared.lifetime.lock().unwrap();
    let latency = *shared.latency.lock().unwrap();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Client to server: plain copying until either side closes.
    let upstream_copy = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    // Server to client: counted, delayed, and broken as planned. Returns the fault that struck.
    let downstream_copy = async {
        let mut sent = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let mut chunk = &buf[..n];
            let strikes = fault.filter(|f| sent + n as u64 >= f.after());
            if let Some(f) = strikes {
                chunk = &chunk[..(f.after() - sent) as usize];
            }
            if client_write.write_all(chunk).await.is_err() {
                return None;
            }
            sent += chunk.len() as u64;
            if strikes.is_some() {
                return strikes;
            }
        }
    };
    let expiry = async {
        match lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(upstream_copy, downstream_copy, expiry);
    let struck = tokio::select! {
        _ = &mut upstream_copy => None,
        struck = &mut downstream_copy => struck,
        _ = &mut expiry => {
            shared.closed_at_lifetime.fetch_add(1, Ordering::SeqCst);
            None
        }
    };
    if let Some(fault) = struck {
        shared.faults_done.fetch_add(1, Ordering::SeqCst);
        if let Fault::Stall { .. } = fault {
            // Hold the connection until the client gives up (or its lifetime ends).
            tokio::select! {
                _ = &mut upstream_copy => {}
                _ = &mut expiry => {}
            }
        }
    }
    // Dropping the halves closes (resets) both connections.
}
