//! The lab's kube-dns: an in-process DNS server (wire format by `hickory-proto`) answering A
//! queries for `<service>.<namespace>.svc.cluster.local` with the ClusterIP and for the
//! externals' DNS names with their current host (each with its TTL), AAAA with an empty
//! answer (the lab is IPv4), anything else with NXDOMAIN; and the client used by pods to
//! resolve `svc/ns/name` targets and external names through it. The zone is shared with the
//! lab ([`SharedZone`]): the rotation step moves a name while the server runs.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    task::JoinSet,
};

use super::model::LabModel;

/// One A record of the lab DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneRecord {
    /// The address.
    pub addr: Ipv4Addr,
    /// TTL of the answer, seconds.
    pub ttl: u32,
}

/// TTL of the answers for Services' names (seconds).
pub(crate) const SERVICE_TTL: u32 = 5;

/// Name → record served by the lab DNS (names lower case, without trailing dot).
pub type Zone = BTreeMap<String, ZoneRecord>;

/// The zone as the running server reads it, changed by the rotation step.
pub(crate) type SharedZone = Arc<RwLock<Zone>>;

/// A failed lookup.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The query could not be encoded or the answer decoded.
    #[error("DNS wire format: {0}")]
    Wire(String),
    /// No answer in time.
    #[error("no DNS answer from {server} for {name} within {timeout:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The name.
        name: String,
        /// The timeout per attempt.
        timeout: Duration,
    },
    /// The server answered without an address.
    #[error("DNS lookup of {name} failed: {code}")]
    NoAddress {
        /// The name.
        name: String,
        /// The response code.
        code: String,
    },
    /// A socket error.
    #[error("DNS socket")]
    Io(#[from] std::io::Error),
}

/// The zone of `model`: every Service's FQDN and its ClusterIP, every external's DNS names
/// and its first host (with the external's TTL).
pub fn zone(model: &LabModel) -> Zone {
    let services = model.services.iter().map(|s| {
        let record = ZoneRecord {
            addr: s.cluster_ip,
            ttl: SERVICE_TTL,
        };
        (s.fqdn(), record)
    });
    let externals = model.externals.iter().flat_map(|e| {
        let record = ZoneRecord {
            addr: e.hosts[0],
            ttl: e.ttl,
        };
        e.dns.iter().map(move |n| (n.clone(), record))
    });
    services.chain(externals).collect()
}

/// Points every name in `names` at `addr` (keeping each name's TTL); returns the address they
/// had (the first name's).
pub(crate) fn move_names(zone: &SharedZone, names: &[String], addr: Ipv4Addr) -> Option<Ipv4Addr> {
    let mut zone = zone
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut old = None;
    for n in names {
        if let Some(r) = zone.get_mut(n) {
            old.get_or_insert(r.addr);
            r.addr = addr;
        }
    }
    old
}

/// Answers one DNS query message; `None` when the bytes are not a query.
pub fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let mut code = ResponseCode::NoError;
    if request.op_code() != OpCode::Query {
        code = ResponseCode::NotImp;
    }
    for q in request.queries() {
        response.add_query(q.clone());
        let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
        match zone.get(&name) {
            Some(r) if q.query_type() == RecordType::A => {
                response.add_answer(Record::from_rdata(
                    q.name().clone(),
                    r.ttl,
                    RData::A(A(r.addr)),
                ));
            }
            Some(_) => {} // AAAA and others: the name exists, no data.
            None => code = ResponseCode::NXDomain,
        }
    }
    response.set_response_code(code);
    response.to_vec().ok()
}

/// Serves the zone over UDP and TCP (length-prefixed) until the tasks are aborted.
pub fn spawn(tasks: &mut JoinSet<()>, udp: UdpSocket, tcp: TcpListener, zone: SharedZone) {
    let udp_zone = Arc::clone(&zone);
    let reply_to = |msg: &[u8], zone: &SharedZone| {
        let zone = zone.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        answer(msg, &zone)
    };
    tasks.spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            if let Ok((n, peer)) = udp.recv_from(&mut buf).await
                && let Some(reply) = reply_to(&buf[..n], &udp_zone)
            {
                let _ = udp.send_to(&reply, peer).await;
            }
        }
    });
    tasks.spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            let zone = Arc::clone(&zone);
            tokio::spawn(async move {
                while let Ok(len) = stream.read_u16().await {
                    let mut msg = vec![0u8; usize::from(len)];
                    if stream.read_exact(&mut msg).await.is_err() {
                        break;
                    }
                    let Some(reply) = reply_to(&msg, &zone) else {
                        break;
                    };
                    let Ok(len) = u16::try_from(reply.len()) else {
                        break;
                    };
                    if stream.write_u16(len).await.is_err()
                        || stream.write_all(&reply).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
}

/// Resolves `name` to an IPv4 address with an A query over `socket` (already in the client's
/// namespace) to `server`: two attempts of `timeout` each.
pub async fn resolve(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Ipv4Addr, DnsError> {
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| DnsError::Wire(e.to_string()))?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0x4242) ^ (name.len() as u16);
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(fqdn, RecordType::A));
    let bytes = query.to_vec().map_err(|e| DnsError::Wire(e.to_string()))?;
    let mut buf = [0u8; 1500];
    for _attempt in 0..2 {
        socket.send_to(&bytes, server).await?;
        let Ok(received) = tokio::time::timeout(timeout, socket.recv_from(&mut buf)).await else {
            continue;
        };
        let (n, _) = received?;
        let reply = Message::from_vec(&buf[..n]).map_err(|e| DnsError::Wire(e.to_string()))?;
        if reply.id() != id {
            continue;
        }
        return reply
            .answers()
            .iter()
            .find_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .ok_or_else(|| DnsError::NoAddress {
                name: name.into(),
                code: reply.response_code().to_string(),
            });
    }
    Err(DnsError::Timeout {
        server,
        name: name.into(),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut q = Message::new();
        q.set_id(7)
            .set_message_type(MessageType::Query)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        q.to_vec().unwrap()
    }

    #[test]
    fn answers_a_empty_aaaa_and_nxdomain() {
        let zone = Zone::from([(
            "api.shop.svc.cluster.local".to_string(),
            ZoneRecord {
                addr: Ipv4Addr::new(10, 96, 0, 20),
                ttl: SERVICE_TTL,
            },
        )]);
        let a = Message::from_vec(
            &answer(&query("API.shop.svc.cluster.local.", RecordType::A), &zone).unwrap(),
        )
        .unwrap();
        assert_eq!(a.id(), 7);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert_eq!(a.answers().len(), 1);
        assert_eq!(
            a.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(10, 96, 0, 20)))
        );
        let aaaa = Message::from_vec(
            &answer(
                &query("api.shop.svc.cluster.local.", RecordType::AAAA),
                &zone,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(aaaa.response_code(), ResponseCode::NoError);
        assert!(aaaa.answers().is_empty());
        let nx = Message::from_vec(
            &answer(&query("db.shop.svc.cluster.local.", RecordType::A), &zone).unwrap(),
        )
        .unwrap();
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        assert!(answer(b"garbage", &zone).is_none());
    }

    #[test]
    fn external_names_answer_with_their_ttl_and_move() {
        let zone: SharedZone = Arc::new(RwLock::new(Zone::from([
            (
                "api.payments.example".to_string(),
                ZoneRecord {
                    addr: Ipv4Addr::new(198, 51, 100, 1),
                    ttl: 30,
                },
            ),
            (
                "pay.example".to_string(),
                ZoneRecord {
                    addr: Ipv4Addr::new(198, 51, 100, 1),
                    ttl: 7,
                },
            ),
        ])));
        let ask = |name: &str| {
            let reply = answer(&query(name, RecordType::A), &zone.read().unwrap()).unwrap();
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(reply.answers().len(), 1, "{name}");
            (reply.answers()[0].data().clone(), reply.answers()[0].ttl())
        };
        assert_eq!(
            ask("api.payments.example."),
            (RData::A(A(Ipv4Addr::new(198, 51, 100, 1))), 30)
        );
        let names = [
            "api.payments.example".to_string(),
            "pay.example".to_string(),
        ];
        assert_eq!(
            move_names(&zone, &names, Ipv4Addr::new(198, 51, 100, 2)),
            Some(Ipv4Addr::new(198, 51, 100, 1))
        );
        assert_eq!(
            ask("api.payments.example."),
            (RData::A(A(Ipv4Addr::new(198, 51, 100, 2))), 30)
        );
        assert_eq!(
            ask("pay.example."),
            (RData::A(A(Ipv4Addr::new(198, 51, 100, 2))), 7)
        );
        assert_eq!(
            move_names(&zone, &["nope.example".to_string()], Ipv4Addr::LOCALHOST),
            None
        );
    }
}
