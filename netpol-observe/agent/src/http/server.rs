//! The agent's HTTP/1.1 server: hyper's connection driver with bounds a port open to the
//! cluster needs ([`ServerLimits`]):
//!
//! - **header read / keep-alive idle timeout**: a request head must have arrived completely
//!   within `header_read_timeout` of the connection opening or of the previous response being
//!   sent (hyper's `header_read_timeout`, which runs while the connection waits for a request),
//!   else the connection is closed — a slow or idle client holds nothing longer;
//! - **write timeout**: a response write that makes no progress for `write_timeout` (a client
//!   that stops reading) closes the connection, which drops the response (and the flows
//!   snapshot it streams);
//! - **connections**: at most `max_connections` at once; further ones wait in the listen
//!   backlog until one closes.
//!
//! On shutdown the listener closes, open connections finish their response (keep-alive off)
//! for up to `shutdown_grace`, then are dropped.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
    time::Sleep,
};

/// Bounds of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time for a whole request head to arrive, counted from the connection's start or the end
    /// of the previous response (so also the keep-alive idle timeout). Default 10 s.
    pub header_read_timeout: Duration,
    /// Time a response write may make no progress. Default 30 s.
    pub write_timeout: Duration,
    /// Connections served at once. Default 256.
    pub max_connections: usize,
    /// Time open connections get to finish at shutdown. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` completes. Each request carries
/// the peer's address as [`ConnectInfo<SocketAddr>`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
        let app = TowerToHyperService::new(router.clone());
        let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&app, req)
        });
        let conn = graceful.watch(builder.serve_connection(io, svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "HTTP connection closed: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::debug!("HTTP connections still open at shutdown are dropped");
        }
    }
    Ok(())
}

/// A stream whose writes fail with [`io::ErrorKind::TimedOut`] once one has made no progress
/// for the timeout (the peer stopped reading).
#[derive(Debug)]
pub(crate) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// `inner` with writes bounded by `timeout`.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Maps a write's poll result: progress disarms the timer, a pending write arms it (once)
    /// and fails when it fires.
    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(v)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {} s", timeout.as_secs_f64()),
                )))
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::{
        net::SocketAddr,
        time::{Duration, Instant},
    };

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// A server of `/hello` with `limits` on a free loopback port; stops when the sender drops.
    async fn start(limits: ServerLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/hello",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                assert!(peer.ip().is_loopback());
                "hello\n"
            }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Reads until the peer closes; returns what came and how long it took.
    async fn read_until_closed(s: &mut TcpStream, bound: Duration) -> (String, Duration) {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(bound, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!("connection still open after {bound:?}"),
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
    }

    fn limits(header: Duration) -> ServerLimits {
        ServerLimits {
            header_read_timeout: header,
            ..ServerLimits::default()
        }
    }

    /// A client that sends half a request head and then nothing is cut off at the header read
    /// timeout; one that stays idle after a response too (keep-alive idle timeout).
    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off() {
        let (addr, _stop) = start(limits(Duration::from_millis(300))).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (got, took) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(!got.contains("hello"), "{got}");
        assert!(took < Duration::from_secs(2), "closed after {took:?}");

        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, took) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("hello\n"),
            "{got}"
        );
        assert!(took >= Duration::from_millis(250), "kept alive {took:?}");
        assert!(took < Duration::from_secs(2), "closed after {took:?}");
    }

    /// With one connection allowed, a second is served only once the first is gone.
    #[tokio::test]
    async fn connections_are_bounded() {
        let (addr, _stop) = start(ServerLimits {
            max_connections: 1,
            ..limits(Duration::from_millis(500))
        })
        .await;
        let _first = TcpStream::connect(addr).await.unwrap();
        // Let the server take the first connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let mut second = TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_until_closed(&mut second, Duration::from_secs(5)).await;
        assert!(got.ends_with("hello\n"), "{got}");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(350),
            "served after {waited:?}, before the first connection was cut"
        );
    }

    /// A write that makes no progress (the peer reads nothing) fails after the write timeout.
    #[tokio::test(start_paused = true)]
    async fn stalled_writes_time_out() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        // A slow but steady reader is never cut off.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut n = 0;
            while n < 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                n += b.read(&mut buf).await.unwrap();
            }
        });
        w.write_all(&[0u8; 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
