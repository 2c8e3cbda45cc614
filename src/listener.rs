//! Accepting connections, for every listener (gRPC and HTTP):
//! - at most `server.max_connections` open at once on each, and at most
//!   `server.max_connections_per_ip` from one client address (IPv6: one /64; the proxies in
//!   `server.trusted_proxies` are not capped). Beyond either, a new connection is closed as
//!   soon as it is accepted, rather than left to wait in the backlog;
//! - a connection must open its protocol within `server.handshake_timeout`: with TLS, the
//!   whole TLS handshake; without, on gRPC the whole HTTP/2 client preface, on HTTP its first
//!   bytes (a request's head must then arrive within `server.http_idle_timeout`, see
//!   [`crate::http::serve`]). Silent sockets cannot sit on the slots;
//! - TCP keep-alive finds peers that vanished; `TCP_NODELAY` sends small frames at once
//!   (Nagle's algorithm against a delayed ACK would hold a response written in pieces for up
//!   to 40 ms).
//!
//! On gRPC, `server.max_connection_age` then bounds how long any connection is kept.
//!
//! Every connection carries its [`Peer`] (address, and the client certificate its handshake
//! verified) to every request.
//!
//! Layer: adapter. Uses [`crate::config`], [`crate::tls`] and [`crate::client_ip`]; the gRPC
//! and HTTP servers take connections through it.

use std::{
    collections::HashMap,
    future::Future as _,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};

use crate::{
    client_ip::Peer,
    tls::{Protocol, Tls},
};

/// TCP keep-alive: the first probe after this long without traffic.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// The HTTP/2 client preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long the calls of a gRPC connection past `server.max_connection_age` may take to
/// finish (streams such as `WatchRevocations` and `Health/Watch` included: their clients
/// resume on a new connection); the age itself when it is shorter.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(60);
/// How soon a connection is looked at again while its preface arrives in pieces (doubling).
const PREFACE_POLL: Duration = Duration::from_millis(10);
/// The longest pause between two looks.
const PREFACE_POLL_MAX: Duration = Duration::from_millis(640);

/// How a listener takes connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64).
    pub max_per_ip: usize,
    /// Addresses not capped per address (`server.trusted_proxies`).
    pub trusted: crate::client_ip::TrustedProxies,
    /// The longest a new connection may take to open its protocol.
    pub handshake_timeout: Duration,
    /// Whether the protocol is HTTP/2 with prior knowledge (gRPC): the whole client preface
    /// must arrive in time, not only its first byte.
    pub http2: bool,
    /// How long a connection may live at most, if it is bounded.
    pub lifetime: Option<Duration>,
    /// TLS, when the listeners speak it.
    pub tls: Option<Tls>,
}

impl ConnectionLimits {
    /// The limits of a listener speaking gRPC (`http2`) or HTTP/1.1.
    pub fn new(settings: &crate::config::ServerSettings, http2: bool) -> Self {
        Self {
            max_connections: settings.max_connections,
            max_per_ip: settings.max_connections_per_ip,
            trusted: crate::client_ip::TrustedProxies::new(&settings.trusted_proxies),
            handshake_timeout: settings.handshake_timeout,
            http2,
            // gRPC asks a connection to go (GOAWAY) at `max_connection_age`; its calls,
            // streams included, get the grace, and then it is cut here (tonic 0.14 does
            // either the GOAWAY or the cut, not both).
            lifetime: http2.then(|| {
                settings
                    .max_connection_age
                    .saturating_add(MAX_CONNECTION_AGE_GRACE.min(settings.max_connection_age))
            }),
            tls: None,
        }
    }

    /// The same limits, on TLS.
    pub fn with_tls(mut self, tls: Option<Tls>) -> Self {
        self.tls = tls;
        self
    }
}

/// A connection taken: it holds its slot until it is dropped. Past its hard end (gRPC: the
/// maximum age and its grace) every read and write fails, which closes it.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    peer: Peer,
    end: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: Slot,
}

/// A listener's slot, and the open-connections gauge that counts it.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
    /// The per-address count this slot is in, if its address is capped.
    host: Option<(IpAddr, Hosts)>,
}

/// Connections open per client address.
type Hosts = Arc<Mutex<HashMap<IpAddr, usize>>>;

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("keystone_connections", "listener" => self.listener).decrement(1);
        if let Some((host, hosts)) = &self.host {
            let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = hosts.get_mut(host) {
                *open -= 1;
                if *open == 0 {
                    hosts.remove(host);
                }
            }
        }
    }
}

/// A connection's bytes: plain TCP, or TLS over it (with what was read of it to check the
/// HTTP/2 preface, handed to the server first).
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls {
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        replay: Vec<u8>,
        replayed: usize,
    },
}

impl Connection {
    /// The peer: its address, and its verified client certificate.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// An error once the connection is past its hard end (the server always has a read
    /// pending, so the timer wakes it then).
    fn ended(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(end) = &mut self.end
            && end.as_mut().poll(cx).is_ready()
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived server.max_connection_age and its grace",
            ));
        }
        Ok(())
    }
}

/// Runs `$call` on whichever stream the connection has.
macro_rules! on_stream {
    ($self:ident, $stream:ident => $call:expr) => {
        match &mut $self.stream {
            Stream::Plain($stream) => $call,
            Stream::Tls {
                stream: $stream, ..
            } => $call,
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.ended(cx)?;
        if let Stream::Tls {
            replay, replayed, ..
        } = &mut self.stream
            && *replayed < replay.len()
            && buf.remaining() > 0
        {
            let take = (replay.len() - *replayed).min(buf.remaining());
            buf.put_slice(&replay[*replayed..*replayed + take]);
            *replayed += take;
            return Poll::Ready(Ok(()));
        }
        on_stream!(self, stream => Pin::new(stream).poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.ended(cx)?;
        on_stream!(self, stream => Pin::new(stream).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.ended(cx)?;
        on_stream!(self, stream => Pin::new(stream).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, stream => Pin::new(stream).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, stream => Pin::new(stream).poll_shutdown(cx))
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// The connections a listener took and let through, in the order they spoke first.
#[derive(Debug)]
pub struct Connections {
    receiver: mpsc::Receiver<Connection>,
}

impl Connections {
    /// Starts taking connections on `listener` (named in metrics and logs) on the current
    /// runtime. It stops when this is dropped.
    pub fn start(listener: TcpListener, name: &'static str, limits: ConnectionLimits) -> Self {
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, name, limits, sender));
        Self { receiver }
    }

    /// The next connection. Never ends while this exists (the accept loop stops only when
    /// this is dropped).
    pub async fn next(&mut self) -> Connection {
        match self.receiver.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    /// As a stream, for tonic.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<Connection>> {
        use tokio_stream::StreamExt as _;
        tokio_stream::wrappers::ReceiverStream::new(self.receiver).map(Ok)
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    limits: ConnectionLimits,
    sender: mpsc::Sender<Connection>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let hosts: Hosts = Arc::default();
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was taken.
                tracing::warn!(listener = name, error = %error, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&slots, &hosts, &limits, name, peer.ip()) else {
            drop(stream);
            continue;
        };
        if let Err(error) = tune(&stream) {
            tracing::debug!(listener = name, error = %error, "cannot set socket options");
        }
        let sender = sender.clone();
        let (timeout, http2, lifetime) = (limits.handshake_timeout, limits.http2, limits.lifetime);
        let tls = limits.tls.as_ref().map(|tls| {
            tls.handshake(if http2 {
                Protocol::Grpc
            } else {
                Protocol::Http
            })
        });
        tokio::spawn(async move {
            let opened = tokio::select! {
                // The server stopped: nothing waits for this connection any more.
                () = sender.closed() => return,
                opened = tokio::time::timeout(timeout, open(stream, peer, http2, tls, name)) => opened,
            };
            match opened {
                Ok(Some((stream, peer))) => {
                    let connection = Connection {
                        stream,
                        peer,
                        end: lifetime.map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
                        _slot: slot,
                    };
                    // Refused only when the server has stopped.
                    let _ = sender.send(connection).await;
                }
                // Closed, failed, or refused in the TLS handshake before it said anything.
                Ok(None) => {}
                Err(_) => {
                    metrics::counter!("keystone_connections_refused_total", "listener" => name, "reason" => "silent")
                        .increment(1);
                    tracing::debug!(listener = name, %peer, "connection closed: it did not open its protocol within server.handshake_timeout");
                }
            }
        });
    }
}

/// Opens a connection: with TLS, the handshake (the client certificate it verified goes into
/// the [`Peer`]) and then, on HTTP/2, the client preface read through it; without, the
/// protocol's opening bytes. `None` when it closed or failed first.
async fn open(
    stream: TcpStream,
    addr: SocketAddr,
    http2: bool,
    tls: Option<crate::tls::Handshake>,
    listener: &'static str,
) -> Option<(Stream, Peer)> {
    use tokio::io::AsyncReadExt as _;
    let Some(handshake) = tls else {
        return match opening(&stream, http2).await {
            Ok(true) => Some((
                Stream::Plain(stream),
                Peer {
                    addr,
                    certificates: None,
                    issued_by_client_ca: false,
                    thumbprint: None,
                },
            )),
            Ok(false) | Err(_) => None,
        };
    };
    let mut stream = match tokio_rustls::TlsAcceptor::from(handshake.config.clone())
        .accept(stream)
        .await
    {
        Ok(stream) => stream,
        // Closed before a ClientHello (a TCP probe, a port scan): no handshake failed.
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return None,
        Err(error) => {
            metrics::counter!("keystone_tls_handshake_failures_total", "listener" => listener)
                .increment(1);
            tracing::debug!(listener, %addr, error = %error, "TLS handshake failed");
            return None;
        }
    };
    let certificates: Option<std::sync::Arc<[_]>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .filter(|chain| !chain.is_empty())
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
    // Taken once here, not on every call that checks a bound token.
    let thumbprint = certificates.as_deref().and_then(<[_]>::first).map(|der| {
        let mut bytes = [0_u8; 32];
        bytes.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref()).as_ref(),
        );
        bytes
    });
    let issued_by_client_ca = match certificates.as_deref() {
        None => false,
        Some(chain) => match handshake.client_certificate(chain) {
            Some(issued_by_client_ca) => issued_by_client_ca,
            // Resumed with a certificate that would not be taken now.
            None => {
                metrics::counter!("keystone_tls_handshake_failures_total", "listener" => listener)
                    .increment(1);
                tracing::debug!(listener, %addr, "a resumed TLS session's certificate is no longer accepted");
                return None;
            }
        },
    };
    // The HTTP/2 preface in time, as on plaintext (or as much of it as shows it is something
    // else, which the server then refuses).
    let mut replay = Vec::with_capacity(H2_PREFACE.len());
    while http2 && replay.len() < H2_PREFACE.len() {
        let mut chunk = [0_u8; H2_PREFACE.len()];
        let want = H2_PREFACE.len() - replay.len();
        match stream.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => replay.extend_from_slice(&chunk[..read]),
        }
        if replay[..] != H2_PREFACE[..replay.len()] {
            break;
        }
    }
    Some((
        Stream::Tls {
            stream: Box::new(stream),
            replay,
            replayed: 0,
        },
        Peer {
            addr,
            certificates,
            issued_by_client_ca,
            thumbprint,
        },
    ))
}

/// A slot for a connection from `ip`, if the listener and the address have one free.
fn take_slot(
    slots: &Arc<Semaphore>,
    hosts: &Hosts,
    limits: &ConnectionLimits,
    name: &'static str,
    ip: IpAddr,
) -> Option<Slot> {
    let refused = |reason: &'static str| {
        metrics::counter!("keystone_connections_refused_total", "listener" => name, "reason" => reason)
            .increment(1);
        tracing::debug!(listener = name, %ip, reason, "connection refused");
    };
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        refused("limit");
        return None;
    };
    // An IPv4 peer on a dual-stack listener arrives IPv4-mapped.
    let host = if limits.trusted.trusts(ip.to_canonical()) {
        None
    } else {
        let host = crate::client_ip::network_of(ip);
        let mut open = hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(host).or_insert(0);
        if *count >= limits.max_per_ip {
            drop(open);
            refused("per_ip");
            return None;
        }
        *count += 1;
        Some((host, hosts.clone()))
    };
    metrics::gauge!("keystone_connections", "listener" => name).increment(1);
    Some(Slot {
        _permit: permit,
        listener: name,
        host,
    })
}

/// Waits until the connection has opened its protocol, without taking any bytes (the server
/// reads them itself): its first byte, or on HTTP/2 the whole client preface (or as much of it
/// as shows it is something else, which the server then refuses). False if it closed first.
async fn opening(stream: &TcpStream, http2: bool) -> io::Result<bool> {
    let mut head = [0_u8; H2_PREFACE.len()];
    let mut pause = PREFACE_POLL;
    loop {
        let read = stream.peek(&mut head).await?;
        if read == 0 {
            return Ok(false);
        }
        if !http2 || read == head.len() || head[..read] != H2_PREFACE[..read] {
            return Ok(true);
        }
        // Part of the preface: wait for the rest (peek is ready again at once while anything
        // is unread, so the next look waits a moment).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PREFACE_POLL_MAX);
    }
}

/// `TCP_NODELAY` and TCP keep-alive.
fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::network_of;

    #[test]
    fn clients_are_capped_by_address_and_ipv6_by_its_64() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            network_of(ip("2001:db8:1:2:ffff::1")),
            network_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            network_of(ip("2001:db8:1:3::1")),
            network_of(ip("2001:db8:1:2::1"))
        );
    }
}
