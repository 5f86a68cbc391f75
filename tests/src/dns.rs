//! A real DNS server for the tests (UDP and TCP on port 53 in a pod's namespace, wire format by
//! `hickory-proto`) answering A/AAAA queries from a zone the test changes while it runs, and a
//! stub resolver that asks it from another pod.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
};

use crate::netns::Pod;

/// What the server answers for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneEntry {
    /// The addresses (A for IPv4, AAAA for IPv6) with a TTL in seconds.
    Addrs(Vec<IpAddr>, u32),
    /// A CNAME to another name of the zone, with a TTL.
    Cname(String, u32),
}

/// Name (lower case, no trailing dot) → entry; changed by the test while the server runs.
pub type Zone = Arc<Mutex<BTreeMap<String, ZoneEntry>>>;

/// The server: UDP and TCP port 53 on an address of a pod. Stopped on drop.
#[derive(Debug)]
pub struct DnsServer {
    /// The zone it answers from.
    pub zone: Zone,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn key(n: &Name) -> String {
    let s = n.to_lowercase().to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_owned()
}

/// The response to query message `q` from `zone` (CNAMEs followed within the zone).
fn respond(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let req = Message::from_vec(q).ok()?;
    let query = req.queries().first()?.clone();
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .add_query(query.clone());
    let zone = zone
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut at = key(query.name());
    let mut found = false;
    for _ in 0..8 {
        match zone.get(&at) {
            Some(ZoneEntry::Cname(target, ttl)) => {
                let owner = Name::from_str(&format!("{at}.")).ok()?;
                let t = Name::from_str(&format!("{target}.")).ok()?;
                resp.add_answer(Record::from_rdata(owner, *ttl, RData::CNAME(CNAME(t))));
                at = target.clone();
            }
            Some(ZoneEntry::Addrs(addrs, ttl)) => {
                found = true;
                let owner = Name::from_str(&format!("{at}.")).ok()?;
                for a in addrs {
                    let rdata = match (a, query.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    resp.add_answer(Record::from_rdata(owner.clone(), *ttl, rdata));
                }
                break;
            }
            None => break,
        }
    }
    if !found {
        resp.set_response_code(ResponseCode::NXDomain);
    }
    resp.to_vec().ok()
}

impl DnsServer {
    /// Serves `zone` on `addr` port 53 (UDP and TCP) inside `pod`.
    pub fn start(pod: &Pod, addr: IpAddr, zone: BTreeMap<String, ZoneEntry>) -> Result<DnsServer> {
        let zone: Zone = Arc::new(Mutex::new(zone));
        let stop = Arc::new(AtomicBool::new(false));
        let bind = SocketAddr::new(addr, 53);
        let (udp, tcp) = pod.run(move || -> Result<(UdpSocket, TcpListener)> {
            let u = UdpSocket::bind(bind).context("binding UDP 53")?;
            u.set_read_timeout(Some(Duration::from_millis(50)))?;
            let t = TcpListener::bind(bind).context("binding TCP 53")?;
            t.set_nonblocking(true)?;
            Ok((u, t))
        })?;
        let mut threads = Vec::new();
        let (z, s) = (Arc::clone(&zone), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(r) = respond(&buf[..n], &z) {
                    let _ = udp.send_to(&r, from);
                }
            }
        }));
        let (z, s) = (Arc::clone(&zone), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => {
                        let _ = serve_tcp(conn, &z);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        Ok(DnsServer {
            zone,
            stop,
            threads,
        })
    }

    /// Sets what `name` resolves to.
    pub fn set(&self, name: &str, entry: ZoneEntry) {
        self.zone
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), entry);
    }
}

/// One TCP connection: length-prefixed queries, each answered with one write (one segment).
fn serve_tcp(mut conn: TcpStream, zone: &Zone) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut len = [0u8; 2];
    while conn.read_exact(&mut len).is_ok() {
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut q)?;
        if let Some(r) = respond(&q, zone) {
            let mut out = (r.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&r);
            conn.write_all(&out)?;
        }
    }
    Ok(())
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Asks `server` (port 53) for `name` (`AAAA` when `v6`, else `A`) from inside `pod`, over TCP
/// or UDP; returns the addresses answered and the local address the query was sent from.
pub fn resolve(
    pod: &Pod,
    server: IpAddr,
    name: &str,
    v6: bool,
    tcp: bool,
) -> Result<(Vec<IpAddr>, SocketAddr)> {
    let qname = Name::from_str(&format!("{name}.")).context("query name")?;
    let qtype = if v6 { RecordType::AAAA } else { RecordType::A };
    let mut m = Message::new();
    m.set_id(0x5353)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, qtype));
    let q = m.to_vec()?;
    let to = SocketAddr::new(server, 53);
    let (bytes, local) = pod.run(move || -> Result<(Vec<u8>, SocketAddr)> {
        if tcp {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(20))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut out = (q.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&q);
            s.write_all(&out)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut r)?;
            Ok((r, s.local_addr()?))
        } else {
            let any: SocketAddr = if to.is_ipv6() {
                "[::]:0".parse()?
            } else {
                "0.0.0.0:0".parse()?
            };
            let s = UdpSocket::bind(any)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.send_to(&q, to)?;
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf)?;
            Ok((buf[..n].to_vec(), s.local_addr()?))
        }
    })?;
    let r = Message::from_vec(&bytes)?;
    if r.response_code() != ResponseCode::NoError {
        bail!("{name}: {}", r.response_code());
    }
    let addrs = r
        .answers()
        .iter()
        .filter_map(|rec| match rec.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok((addrs, local))
}
