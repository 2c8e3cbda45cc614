//! Accepting connections, for every listener (gRPC and HTTP): at most
//! `server.max_connections` open at once on each (beyond it, a new connection is closed as soon
//! as it is accepted, rather than left to wait in the backlog), and a connection that sends
//! nothing within `server.handshake_timeout` of opening is closed, so idle sockets cannot sit
//! on the slots. TCP keep-alive finds peers that vanished; `TCP_NODELAY` sends small frames at
//! once (Nagle's algorithm against a delayed ACK would hold a response written in pieces for up
//! to 40 ms). On HTTP/1.1, a request's head must also arrive within `server.handshake_timeout`
//! (see [`crate::http::serve`]).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};

/// TCP keep-alive: the first probe after this long without traffic.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How a listener takes connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// The longest a new connection may stay silent; on HTTP/1.1 also the longest wait for
    /// a request's head, idle keep-alive connections included.
    pub handshake_timeout: Duration,
}

impl From<&crate::config::ServerSettings> for ConnectionLimits {
    fn from(settings: &crate::config::ServerSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            handshake_timeout: settings.handshake_timeout,
        }
    }
}

/// A connection taken: it holds its slot until it is dropped.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
}

/// A listener's slot, and the open-connections gauge that counts it.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("keystone_connections", "listener" => self.listener).decrement(1);
    }
}

impl Connection {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("keystone_connections_refused_total", "listener" => name, "reason" => "limit")
                .increment(1);
            tracing::debug!(listener = name, %peer, "connection refused: server.max_connections are open");
            drop(stream);
            continue;
        };
        metrics::gauge!("keystone_connections", "listener" => name).increment(1);
        let slot = Slot {
            _permit: permit,
            listener: name,
        };
        if let Err(error) = tune(&stream) {
            tracing::debug!(listener = name, error = %error, "cannot set socket options");
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            // Its first bytes, without taking them: the server reads them itself.
            let mut first = [0_u8; 1];
            match tokio::time::timeout(limits.handshake_timeout, stream.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {
                    let connection = Connection {
                        stream,
                        peer,
                        _slot: slot,
                    };
                    // Refused only when the server has stopped.
                    let _ = sender.send(connection).await;
                }
                Ok(_) => {}
                Err(_) => {
                    metrics::counter!("keystone_connections_refused_total", "listener" => name, "reason" => "silent")
                        .increment(1);
                    tracing::debug!(listener = name, %peer, "connection closed: it sent nothing within server.handshake_timeout");
                }
            }
        });
    }
}

/// `TCP_NODELAY` and TCP keep-alive.
fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream)
        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE))
}
