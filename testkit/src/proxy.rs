//! A fault proxy for Kafka: a TCP proxy on 127.0.0.1 between a client and the local stack's
//! `PROXIED` listener. That listener advertises the proxy's address, so a client bootstrapped
//! through the proxy keeps every connection behind it (the other listener, which the rest of
//! the tests use, is untouched).
//!
//! The proxy reads the Kafka frames both ways: a request's header holds its API key and
//! correlation id, a response's header its correlation id, and a connection answers its
//! requests in order. So it can act on the requests of one API, or on the responses to them:
//! swallow a request and cut the connection, cut the connection instead of delivering a
//! response, or hold responses back.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The local stack's proxied listener, and the address it advertises: where the proxy listens
/// (`scripts/lib/common.sh`).
pub const PROXIED_LISTENER: &str = "127.0.0.1:9094";
pub const PROXY_ADDRESS: &str = "127.0.0.1:9095";

/// API keys of the transactional requests worth a fault.
pub const ADD_PARTITIONS_TO_TXN: i16 = 24;
pub const END_TXN: i16 = 26;
pub const TXN_OFFSET_COMMIT: i16 = 28;

/// What the proxy does to the traffic of one API (its key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A request of this API is never forwarded, and its connection is cut: the client
    /// retries it on a new connection, and the broker never sees it while the fault lasts.
    CutOnRequest(i16),
    /// A request of this API reaches the broker, but its response is dropped and the
    /// connection cut: the client does not know whether the request took effect.
    CutOnResponse(i16),
    /// Responses to this API are held back this long (and those after them on the same
    /// connection, which answers in order).
    DelayResponses(i16, Duration),
}

#[derive(Debug, Default)]
struct Shared {
    fault: Option<Fault>,
    /// How many times the fault acted.
    hits: u64,
}

/// A running proxy; it stops accepting when dropped (open connections end with their peers).
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Mutex<Shared>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` and forwards every connection to `upstream`. The port may still be
    /// held for a moment by a proxy just dropped (its listener closes when its runtime drops
    /// the aborted task): the bind is retried for up to 10 s.
    pub async fn start(listen: &str, upstream: &str) -> io::Result<Self> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(listen).await {
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                bound => break bound?,
            }
        };
        let upstream: SocketAddr = upstream
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accept = tokio::spawn(accept(listener, upstream, shared.clone()));
        Ok(Self { shared, accept })
    }

    /// Sets the fault (`None`: forward everything), for connections old and new.
    pub fn set(&self, fault: Option<Fault>) {
        let mut shared = lock(&self.shared);
        shared.fault = fault;
    }

    /// How many times a fault acted so far.
    pub fn hits(&self) -> u64 {
        lock(&self.shared).hits
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The proxy's state is a few plain values, each updated in one step: a panic while a lock
/// was held leaves nothing half-written.
fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: TcpListener, upstream: SocketAddr, shared: Arc<Mutex<Shared>>) {
    while let Ok((client, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            // A connection ends when either side closes it, or a fault cuts it: dropping both
            // sockets closes them.
            if let Ok(broker) = TcpStream::connect(upstream).await {
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (broker_read, broker_write) = broker.into_split();
                let pending = Arc::new(Mutex::new(HashMap::new()));
                tokio::select! {
                    _ = requests(client_read, broker_write, pending.clone(), &shared) => {}
                    _ = responses(broker_read, client_write, pending, &shared) => {}
                }
            }
        });
    }
}

/// Reads one frame (its 4-byte length prefix included), or `None` at the end of the stream.
async fn read_frame(from: &mut OwnedReadHalf) -> io::Result<Option<Vec<u8>>> {
    let mut size = [0u8; 4];
    match from.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = usize::try_from(i32::from_be_bytes(size))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative frame length"))?;
    let mut frame = Vec::with_capacity(4 + length);
    frame.extend_from_slice(&size);
    frame.resize(4 + length, 0);
    from.read_exact(&mut frame[4..]).await?;
    Ok(Some(frame))
}

fn i16_at(frame: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
}

fn i32_at(frame: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}

/// Client to broker. A request header: api_key (i16), api_version (i16), correlation_id (i32).
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pending: Arc<Mutex<HashMap<i32, i16>>>,
    shared: &Mutex<Shared>,
) -> io::Result<()> {
    while let Some(frame) = read_frame(&mut from).await? {
        let (Some(api), Some(correlation)) = (i16_at(&frame, 4), i32_at(&frame, 8)) else {
            return Ok(()); // not Kafka: cut
        };
        {
            let mut shared = lock(shared);
            if shared.fault == Some(Fault::CutOnRequest(api)) {
                shared.hits += 1;
                return Ok(());
            }
        }
        lock(&pending).insert(correlation, api);
        to.write_all(&frame).await?;
    }
    Ok(())
}

/// Broker to client. A response header: correlation_id (i32).
async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pending: Arc<Mutex<HashMap<i32, i16>>>,
    shared: &Mutex<Shared>,
) -> io::Result<()> {
    while let Some(frame) = read_frame(&mut from).await? {
        let api = i32_at(&frame, 4).and_then(|correlation| lock(&pending).remove(&correlation));
        let delay = {
            let mut shared = lock(shared);
            match (shared.fault, api) {
                (Some(Fault::CutOnResponse(key)), Some(api)) if key == api => {
                    shared.hits += 1;
                    return Ok(());
                }
                (Some(Fault::DelayResponses(key, by)), Some(api)) if key == api => {
                    shared.hits += 1;
                    Some(by)
                }
                _ => None,
            }
        };
        if let Some(by) = delay {
            tokio::time::sleep(by).await;
        }
        to.write_all(&frame).await?;
    }
    Ok(())
}
