//! Orientation of flows picked up mid-stream, from the sockets of the node's network
//! namespaces (`NETLINK_SOCK_DIAG`).
//!
//! The kernel programs know the initiator of a TCP flow only when they see its SYN. A
//! connection established before the agent started is first seen mid-stream; instead of
//! guessing by port numbers, the datapath asks the kernel which `(address, port)` pairs have a
//! listening TCP socket: the listening side is the responder. For UDP the kernel takes the
//! first packet's sender as the initiator, which is wrong when a conversation older than the
//! agent is first seen on a reply; a *connected* UDP socket (`connect(2)`) names its peer, so
//! a datagram towards a socket connected to its sender is a reply. Unconnected UDP sockets say
//! nothing: a client using `sendto(2)` looks exactly like a server.
//!
//! [`scan`] visits every network namespace it can find (the agent's own, `/var/run/netns/*`,
//! and `/proc/<pid>/ns/net` of every process: in Kubernetes the pods' sandboxes), each from a
//! short-lived thread that `setns(2)`es into it, and dumps its TCP listeners, its connected
//! UDP sockets and its addresses (a listener on `0.0.0.0`/`::` listens on every address of its
//! namespace; loopback addresses are left out).

use std::{
    collections::HashSet,
    fs::File,
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SockDiagMessage, TCP_LISTEN,
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use netpol_observe_ebpf::{DIR_HI_TO_LO, DIR_LO_TO_HI, INITIATOR_UNKNOWN};

use crate::flow::Protocol;

/// Why one network namespace could not be scanned (the others still are).
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// The namespace file cannot be opened or entered.
    #[error("network namespace {path}")]
    Enter {
        /// `/var/run/netns/<name>` or `/proc/<pid>/ns/net`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The sock_diag dump failed.
    #[error("network namespace {path}: sock_diag dump of {what}")]
    Dump {
        /// The namespace.
        path: PathBuf,
        /// `TCP/IPv4 listeners`, …
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An `(address, port)` endpoint.
pub(crate) type SockAddr = (IpAddr, u16);

/// What the sockets of the scanned namespaces say about who initiates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sockets {
    /// Endpoints with a listening TCP socket (wildcard listeners expanded).
    tcp_listening: HashSet<SockAddr>,
    /// Connected UDP sockets: `(local, remote)`.
    udp_connected: HashSet<(SockAddr, SockAddr)>,
    /// Namespaces scanned.
    namespaces: usize,
}

impl Sockets {
    /// Records a listening TCP socket on `addr`.
    pub(crate) fn add_tcp_listener(&mut self, addr: SockAddr) {
        self.tcp_listening.insert(addr);
    }

    /// Records a UDP socket on `local` connected to `remote`.
    pub(crate) fn add_udp_connected(&mut self, local: SockAddr, remote: SockAddr) {
        self.udp_connected.insert((local, remote));
    }

    /// Whether a TCP socket listens on `addr`.
    pub(crate) fn tcp_listening(&self, addr: SockAddr) -> bool {
        self.tcp_listening.contains(&addr)
    }

    /// Number of namespaces scanned, TCP listening endpoints, connected UDP sockets.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.namespaces,
            self.tcp_listening.len(),
            self.udp_connected.len(),
        )
    }

    /// The initiator direction of a new flow: `kernel` is what the kernel program decided
    /// (a direction, or [`INITIATOR_UNKNOWN`] for TCP without SYN). TCP without SYN: the side
    /// listening is the responder (unknown when neither or both listen). UDP: a first packet
    /// sent to a socket connected to its sender is a reply, so the receiver initiated.
    pub(crate) fn orient(&self, protocol: Protocol, lo: SockAddr, hi: SockAddr, kernel: u8) -> u8 {
        match protocol {
            Protocol::Tcp if kernel == INITIATOR_UNKNOWN => {
                match (self.tcp_listening(lo), self.tcp_listening(hi)) {
                    (true, false) => DIR_HI_TO_LO,
                    (false, true) => DIR_LO_TO_HI,
                    _ => kernel,
                }
            }
            Protocol::Udp if kernel == DIR_LO_TO_HI || kernel == DIR_HI_TO_LO => {
                let (sender, receiver) = if kernel == DIR_LO_TO_HI {
                    (lo, hi)
                } else {
                    (hi, lo)
                };
                let reply = self.udp_connected.contains(&(receiver, sender))
                    && !self.udp_connected.contains(&(sender, receiver));
                if reply { kernel ^ 1 } else { kernel }
            }
            _ => kernel,
        }
    }

    fn merge(&mut self, other: Sockets) {
        self.tcp_listening.extend(other.tcp_listening);
        self.udp_connected.extend(other.udp_connected);
        self.namespaces += other.namespaces;
    }
}

/// The network namespaces to scan: the agent's own, `/var/run/netns/*` and every process's,
/// one path per namespace (deduplicated by device and inode).
pub(crate) fn namespace_paths() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("/proc/self/ns/net")];
    for dir in ["/var/run/netns", "/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            names.sort();
            candidates.extend(names);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        candidates.extend(pids.into_iter().map(|p| format!("/proc/{p}/ns/net").into()));
    }
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| seen.insert((m.dev(), m.ino())))
                .unwrap_or(false)
        })
        .collect()
}

/// Scans every namespace of [`namespace_paths`]; namespaces that cannot be scanned are
/// returned as errors (processes come and go), the others are merged.
pub fn scan() -> (Sockets, Vec<SocketsError>) {
    let mut all = Sockets::default();
    let mut errors = Vec::new();
    for path in namespace_paths() {
        match scan_namespace(&path) {
            Ok(s) => all.merge(s),
            Err(e) => errors.push(e),
        }
    }
    (all, errors)
}

/// Scans one network namespace (a file such as `/var/run/netns/<name>`) from a thread that
/// enters it; the calling thread stays where it is.
pub(crate) fn scan_namespace(path: &Path) -> Result<Sockets, SocketsError> {
    let enter = |source| SocketsError::Enter {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(enter)?;
    let owned = path.to_owned();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            SocketsError::Enter {
                path: owned.clone(),
                source: e.into(),
            }
        })?;
        scan_current(&owned)
    })
    .join()
    .unwrap_or_else(|_| Err(enter(io::Error::other("the scanning thread panicked"))))
}

/// Scans the calling thread's network namespace.
fn scan_current(path: &Path) -> Result<Sockets, SocketsError> {
    let dump_err = |what| {
        let path = path.to_owned();
        move |source| SocketsError::Dump { path, what, source }
    };
    let addresses = namespace_addresses().map_err(dump_err("addresses"))?;
    let mut out = Sockets {
        namespaces: 1,
        ..Sockets::default()
    };
    for (family, what) in [
        (AF_INET, "TCP/IPv4 listeners"),
        (AF_INET6, "TCP/IPv6 listeners"),
    ] {
        for h in dump(family, IPPROTO_TCP, StateFlags::LISTEN).map_err(dump_err(what))? {
            if h.state != TCP_LISTEN {
                continue;
            }
            let id = &h.socket_id;
            if id.source_address.is_unspecified() {
                // 0.0.0.0 listens on the namespace's IPv4 addresses; `::` (dual stack by
                // default) on all of them.
                for ip in &addresses {
                    if family == AF_INET6 || ip.is_ipv4() {
                        out.add_tcp_listener((*ip, id.source_port));
                    }
                }
            } else {
                out.add_tcp_listener((canonical(id.source_address), id.source_port));
            }
        }
    }
    for (family, what) in [
        (AF_INET, "UDP/IPv4 sockets"),
        (AF_INET6, "UDP/IPv6 sockets"),
    ] {
        for h in dump(family, IPPROTO_UDP, StateFlags::ESTABLISHED).map_err(dump_err(what))? {
            let id = &h.socket_id;
            if id.destination_port == 0 || id.destination_address.is_unspecified() {
                continue;
            }
            out.add_udp_connected(
                (canonical(id.source_address), id.source_port),
                (canonical(id.destination_address), id.destination_port),
            );
        }
    }
    Ok(out)
}

/// IPv4-mapped IPv6 addresses as IPv4 (as flow records carry them).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The non-loopback addresses of the calling thread's network namespace.
fn namespace_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// One `SOCK_DIAG_BY_FAMILY` dump of the calling thread's network namespace.
fn dump(family: u8, protocol: u8, states: StateFlags) -> io::Result<Vec<InetResponseHeader>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the dump ended without NLMSG_DONE",
            ));
        }
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(r.header);
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(e.to_io());
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_side_responds() {
        let client: SockAddr = ([10, 0, 0, 1].into(), 80);
        let server: SockAddr = ([10, 0, 0, 2].into(), 40000);
        let mut s = Sockets::default();
        s.add_tcp_listener(server);
        // lo = client, hi = server: the client (lo) initiates whatever the ports say.
        assert_eq!(
            s.orient(Protocol::Tcp, client, server, INITIATOR_UNKNOWN),
            DIR_LO_TO_HI
        );
        assert_eq!(
            s.orient(Protocol::Tcp, server, client, INITIATOR_UNKNOWN),
            DIR_HI_TO_LO
        );
        // A SYN seen by the kernel wins.
        assert_eq!(
            s.orient(Protocol::Tcp, client, server, DIR_HI_TO_LO),
            DIR_HI_TO_LO
        );
        // Neither (or both) listening: still unknown (the port guess applies later).
        let other: SockAddr = ([10, 0, 0, 3].into(), 5);
        assert_eq!(
            s.orient(Protocol::Tcp, client, other, INITIATOR_UNKNOWN),
            INITIATOR_UNKNOWN
        );
        s.add_tcp_listener(client);
        assert_eq!(
            s.orient(Protocol::Tcp, client, server, INITIATOR_UNKNOWN),
            INITIATOR_UNKNOWN
        );
    }

    #[test]
    fn a_datagram_to_a_socket_connected_to_its_sender_is_a_reply() {
        let client: SockAddr = ([10, 0, 0, 1].into(), 53000);
        let server: SockAddr = ([10, 0, 0, 2].into(), 53);
        let mut s = Sockets::default();
        s.add_udp_connected(client, server);
        // lo = client, hi = server. First packet server → client (HI_TO_LO): a reply.
        assert_eq!(
            s.orient(Protocol::Udp, client, server, DIR_HI_TO_LO),
            DIR_LO_TO_HI
        );
        // First packet client → server: the kernel is right.
        assert_eq!(
            s.orient(Protocol::Udp, client, server, DIR_LO_TO_HI),
            DIR_LO_TO_HI
        );
        // Both connected to each other: no evidence either way.
        s.add_udp_connected(server, client);
        assert_eq!(
            s.orient(Protocol::Udp, client, server, DIR_HI_TO_LO),
            DIR_HI_TO_LO
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical(mapped), IpAddr::from([10, 1, 2, 3]));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    /// A real dump of this process's namespace finds a listener this test opens (needs
    /// nothing but a socket; sock_diag works unprivileged).
    #[test]
    fn finds_a_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = scan_namespace(Path::new("/proc/thread-self/ns/net"));
        let s = match s {
            Ok(s) => s,
            // setns needs CAP_SYS_ADMIN even into one's own namespace.
            Err(SocketsError::Enter { .. }) if !nix::unistd::geteuid().is_root() => {
                scan_current(Path::new("self")).unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        assert!(s.tcp_listening(([127, 0, 0, 1].into(), port)), "{s:?}");
        assert_eq!(s.counts().0, 1);
    }
}
