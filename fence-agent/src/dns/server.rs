//! One identity's resolver: its UDP sockets and TCP listeners served by the shared engine, as
//! tasks that end when the [`Server`] is dropped.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::{sleep, timeout},
};
use tracing::{debug, warn};

use super::{
    Transport,
    engine::{Engine, Incoming, OwnAddrs, Reply},
};

/// Tries at finding a port free for both TCP and UDP.
const BIND_ATTEMPTS: usize = 16;

/// Pause after an error accepting or receiving (out of descriptors, ...), so as not to spin.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The sockets one identity's queries arrive on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl Listeners {
    /// A UDP socket and a TCP listener on 127.0.0.1 and on ::1, the two of a family on the same
    /// free port (IPv6 is left out, with a debug line, where the host has no ::1).
    pub async fn bind_loopback() -> io::Result<Self> {
        let mut listeners = Self::default();
        listeners.bind_pair(Ipv4Addr::LOCALHOST.into()).await?;
        match listeners.bind_pair(Ipv6Addr::LOCALHOST.into()).await {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)) => {
                debug!(error = %e, "no ::1: the resolver listens on IPv4 only");
            }
            Err(e) => return Err(e),
        }
        Ok(listeners)
    }

    async fn bind_pair(&mut self, ip: IpAddr) -> io::Result<()> {
        let mut last = io::Error::from(io::ErrorKind::AddrInUse);
        for _ in 0..BIND_ATTEMPTS {
            let tcp = TcpListener::bind((ip, 0)).await?;
            let port = tcp.local_addr()?.port();
            match UdpSocket::bind((ip, port)).await {
                Ok(udp) => {
                    self.tcp.push(tcp);
                    self.udp.push(udp);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The addresses of every socket and listener.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let udp = self.udp.iter().filter_map(|s| s.local_addr().ok());
        let tcp = self.tcp.iter().filter_map(|l| l.local_addr().ok());
        let mut addrs: Vec<SocketAddr> = udp.chain(tcp).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }
}

/// One identity's running resolver. Dropping it stops every task (listeners, queries in flight,
/// TCP connections) and forgets its addresses.
#[derive(Debug)]
pub struct Server {
    identity: u32,
    addrs: Vec<SocketAddr>,
    own: Arc<OwnAddrs>,
    tasks: JoinSet<()>,
}

impl Server {
    pub fn identity(&self) -> u32 {
        self.identity
    }

    /// Where it listens (UDP and TCP).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.tasks.abort_all();
        self.own.remove(&self.addrs);
    }
}

/// What one identity's tasks share.
struct Shared<A> {
    identity: u32,
    engine: Arc<Engine<A>>,
    in_flight: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
}

/// Serves `identity`'s queries on `listeners` until the returned [`Server`] is dropped. Must be
/// called within a tokio runtime.
pub fn serve<A: Send + Sync + 'static>(identity: u32, listeners: Listeners, engine: Arc<Engine<A>>) -> Server {
    let addrs = listeners.local_addrs();
    let own = Arc::clone(engine.own_addrs());
    own.add(&addrs);
    let shared = Arc::new(Shared {
        identity,
        in_flight: Arc::new(Semaphore::new(engine.config().max_in_flight)),
        tcp_connections: Arc::new(Semaphore::new(engine.config().max_tcp_connections)),
        engine,
    });
    let mut tasks = JoinSet::new();
    for socket in listeners.udp {
        tasks.spawn(udp_loop(Arc::clone(&shared), Arc::new(socket)));
    }
    for listener in listeners.tcp {
        tasks.spawn(tcp_loop(Arc::clone(&shared), listener));
    }
    debug!(identity, ?addrs, "DNS resolver serving");
    Server { identity, addrs, own, tasks }
}

/// Receives datagrams; each query runs as its own task, owned by this one.
async fn udp_loop<A: Send + Sync + 'static>(shared: Arc<Shared<A>>, socket: Arc<UdpSocket>) {
    let mut queries = JoinSet::new();
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => {
                    let bytes = buf.get(..n).unwrap_or_default().to_vec();
                    match Arc::clone(&shared.in_flight).try_acquire_owned() {
                        Ok(permit) => drop(queries.spawn(udp_query(Arc::clone(&shared), Arc::clone(&socket), peer, bytes, permit))),
                        Err(_) => {
                            let reply = shared.engine.overloaded(&incoming(&shared, peer, Transport::Udp, &bytes));
                            send_udp(&shared, &socket, peer, reply).await;
                        }
                    }
                }
                Err(e) => {
                    warn!(identity = shared.identity, error = %e, "DNS UDP receive failed");
                    sleep(ERROR_PAUSE).await;
                }
            },
            Some(_) = queries.join_next(), if !queries.is_empty() => {}
        }
    }
}

fn incoming<'a, A>(shared: &Shared<A>, peer: SocketAddr, transport: Transport, bytes: &'a [u8]) -> Incoming<'a> {
    Incoming { identity: shared.identity, peer, transport, bytes }
}

async fn udp_query<A: Send + Sync + 'static>(
    shared: Arc<Shared<A>>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
) {
    let reply = shared.engine.handle(&incoming(&shared, peer, Transport::Udp, &bytes)).await;
    send_udp(&shared, &socket, peer, reply).await;
}

async fn send_udp<A: Send + Sync + 'static>(
    shared: &Shared<A>,
    socket: &UdpSocket,
    peer: SocketAddr,
    reply: Option<Reply>,
) {
    let Some(reply) = reply else { return };
    match socket.send_to(&reply.bytes, peer).await {
        Ok(_) => shared.engine.sent(&reply),
        Err(e) => debug!(identity = shared.identity, %peer, error = %e, "DNS answer not sent"),
    }
}

/// Accepts connections, at most `max_tcp_connections` at once (others are closed at once).
async fn tcp_loop<A: Send + Sync + 'static>(shared: Arc<Shared<A>>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&shared.tcp_connections).try_acquire_owned() {
                    Ok(permit) => drop(connections.spawn(tcp_connection(Arc::clone(&shared), stream, peer, permit))),
                    Err(_) => debug!(identity = shared.identity, %peer, "too many DNS TCP connections: closed"),
                },
                Err(e) => {
                    warn!(identity = shared.identity, error = %e, "DNS TCP accept failed");
                    sleep(ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection's queries one after the other until it closes, errs or idles.
async fn tcp_connection<A: Send + Sync + 'static>(
    shared: Arc<Shared<A>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let idle = shared.engine.config().tcp_idle_timeout;
    while let Some(bytes) = read_message(&mut stream, idle).await {
        let incoming = incoming(&shared, peer, Transport::Tcp, &bytes);
        let reply = match Arc::clone(&shared.in_flight).try_acquire_owned() {
            Ok(_permit) => shared.engine.handle(&incoming).await,
            Err(_) => shared.engine.overloaded(&incoming),
        };
        let Some(reply) = reply else { continue };
        if !write_message(&mut stream, &reply.bytes, idle).await {
            return;
        }
        shared.engine.sent(&reply);
    }
}

/// One length-prefixed message (RFC 1035 4.2.2), or `None` at the end, an error or `idle`.
async fn read_message(stream: &mut TcpStream, idle: Duration) -> Option<Vec<u8>> {
    let read = async {
        let len = stream.read_u16().await?;
        let mut bytes = vec![0u8; usize::from(len)];
        stream.read_exact(&mut bytes).await?;
        Ok::<_, io::Error>(bytes)
    };
    timeout(idle, read).await.ok()?.ok()
}

async fn write_message(stream: &mut TcpStream, bytes: &[u8], idle: Duration) -> bool {
    let Ok(len) = u16::try_from(bytes.len()) else { return false };
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    matches!(timeout(idle, stream.write_all(&framed)).await, Ok(Ok(())))
}
