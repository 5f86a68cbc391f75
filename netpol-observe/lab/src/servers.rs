//! In-process servers on every declared port: TCP echo (answers whatever it reads, so a
//! connection completes with data both ways) and UDP echo. Sockets are created inside the
//! pod's namespace by [`netns::run_in`] and then served by tokio tasks.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    task::JoinSet,
};

use super::netns::{self, NetnsError};
use crate::report::Chain;

/// Binds a TCP listener on `0.0.0.0:port` inside `netns`.
pub(crate) fn bind_tcp(netns_name: &str, port: u16) -> Result<TcpListener, NetnsError> {
    let std_listener = netns::run_in(netns_name, move || {
        let l = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    TcpListener::from_std(std_listener).map_err(|e| NetnsError::Enter {
        netns: netns_name.into(),
        message: e.to_string(),
    })
}

/// Binds a UDP socket on `0.0.0.0:port` inside `netns`.
pub(crate) fn bind_udp(netns_name: &str, port: u16) -> Result<UdpSocket, NetnsError> {
    let std_socket = netns::run_in(netns_name, move || {
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    UdpSocket::from_std(std_socket).map_err(|e| NetnsError::Enter {
        netns: netns_name.into(),
        message: e.to_string(),
    })
}

/// Serves TCP echo on `listener` until the task is aborted.
pub(crate) fn spawn_tcp_echo(tasks: &mut JoinSet<()>, listener: TcpListener) {
    tasks.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// Serves UDP echo on `socket` until the task is aborted.
pub(crate) fn spawn_udp_echo(tasks: &mut JoinSet<()>, socket: UdpSocket) {
    tasks.spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], peer).await;
            }
        }
    });
}

/// Creates an unconnected TCP socket inside `netns`, for a client.
pub(crate) fn tcp_client_socket(netns_name: &str) -> Result<tokio::net::TcpSocket, NetnsError> {
    let socket = netns::run_in(netns_name, || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
}

/// Creates a UDP socket bound to an ephemeral port inside `netns`, for a client.
pub fn udp_client_socket(netns_name: &str) -> Result<UdpSocket, NetnsError> {
    let std_socket = netns::run_in(netns_name, || {
        let s = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    UdpSocket::from_std(std_socket).map_err(|e| NetnsError::Enter {
        netns: netns_name.into(),
        message: e.to_string(),
    })
}

/// A failed [`http_get`]: what went wrong, naming the address.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpGetError(pub String);

/// `GET path_and_query` (HTTP/1.1, no TLS) on `addr` over a TCP connection opened inside
/// `netns` — how the lab reaches the agent's API and Prometheus on the node's loopback.
/// Status code and body; at most 2 s to connect and 10 s for the answer.
pub async fn http_get(
    netns_name: &str,
    addr: SocketAddr,
    path_and_query: &str,
) -> Result<(u16, String), HttpGetError> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    let fail = |m: String| HttpGetError(m);
    let socket = tcp_client_socket(netns_name).map_err(|e| fail(Chain(&e).to_string()))?;
    let stream = tokio::time::timeout(std::time::Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| fail(format!("no connection to {addr} within 2s")))?
        .map_err(|e| fail(format!("connect to {addr}: {e}")))?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(Chain(&e).to_string()))?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(Chain(&e).to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(Chain(&e).to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(Chain(&e).to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| fail(format!("no answer from {addr} within 10s")))?
}
