//! Following interfaces with rtnetlink: the initial dump and link add/remove notifications.

use futures::StreamExt;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use rtnetlink::{
    MulticastGroup, new_multicast_connection,
    packet_core::{NetlinkMessage, NetlinkPayload},
    sys::SocketAddr,
};

use super::DatapathError;

/// A link appeared (or changed) or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkChange {
    /// The link exists with this index and name.
    Present(u32, String),
    /// The link with this index is gone.
    Removed(u32),
}

/// Notifications of link changes.
pub(crate) type LinkMessages =
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Subscribes to link notifications, then dumps the links present now (subscribing first so
/// that nothing falls between the dump and the notifications).
pub(crate) async fn subscribe()
-> Result<(Vec<(u32, String)>, LinkMessages, rtnetlink::Handle), DatapathError> {
    let (conn, handle, messages) =
        new_multicast_connection(&[MulticastGroup::Link]).map_err(|e| DatapathError::Netlink {
            what: "opening a socket".into(),
            source: e.into(),
        })?;
    tokio::spawn(conn);
    let mut links = Vec::new();
    let mut dump = handle.link().get().execute();
    while let Some(msg) = dump.next().await {
        let msg = msg.map_err(|e| DatapathError::Netlink {
            what: "listing links".into(),
            source: e.into(),
        })?;
        if let Some(name) = link_name(&msg) {
            links.push((msg.header.index, name));
        }
    }
    Ok((links, messages, handle))
}

/// Interprets one notification.
pub(crate) fn change(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkChange> {
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            link_name(&link).map(|n| LinkChange::Present(link.header.index, n))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
            Some(LinkChange::Removed(link.header.index))
        }
        _ => None,
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Deletes the clsact qdisc of `ifindex` (only ever one the datapath added itself, after
/// detaching its own filters) unless another tool has added filters to it meanwhile:
/// deleting it would delete theirs.
pub(crate) async fn delete_clsact(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<(), DatapathError> {
    use futures::TryStreamExt;
    use netlink_packet_route::tc::TcHandle;
    let err = |e: rtnetlink::Error| DatapathError::Netlink {
        what: format!("listing the tc filters of ifindex {ifindex}"),
        source: e.into(),
    };
    let filters = handle.traffic_filter(ifindex as i32);
    let ingress: Vec<_> = filters
        .clone()
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await
        .map_err(err)?;
    let egress: Vec<_> = filters
        .clone()
        .get()
        .egress()
        .execute()
        .try_collect()
        .await
        .map_err(err)?;
    if !ingress.is_empty() || !egress.is_empty() {
        tracing::info!(
            ifindex,
            "keeping the clsact qdisc the datapath added: other filters use it now"
        );
        return Ok(());
    }
    let mut req = handle.qdisc().del(ifindex as i32);
    let header = &mut req.message_mut().header;
    header.parent = TcHandle::from(0xFFFF_FFF1u32);
    header.handle = TcHandle::from(0xFFFF_0000u32);
    req.execute().await.map_err(|e| DatapathError::Netlink {
        what: format!("deleting clsact on ifindex {ifindex}"),
        source: e.into(),
    })
}
