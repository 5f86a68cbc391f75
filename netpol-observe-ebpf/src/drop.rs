//! Shared types of the drop tracepoint (`kfree_skb`): map, program and global names, and the
//! `#[repr(C)]` key/value of the in-kernel drop aggregation.
//!
//! The program reads `sk_buff` fields at offsets userspace resolved from the kernel's BTF and
//! wrote into the `SKB_OFF_*` globals before loading; it only counts drops whose reason is
//! enabled in [`MAP_DROP_REASONS`] (an array indexed by the `enum skb_drop_reason` value).
//! With [`GLOBAL_DROP_NETNS_INUM`] set it also counts only drops whose device is in that
//! network namespace (several simulated nodes on one kernel each count their own).

/// Name of the `tp_btf` program attached to `skb:kfree_skb`.
pub const PROG_KFREE_SKB: &str = "kfree_skb_drops";
/// The BTF tracepoint the drop program attaches to.
pub const TRACEPOINT_KFREE_SKB: &str = "kfree_skb";
/// Name of the LRU hash map [`DropKey`] → [`DropValue`].
pub const MAP_DROPS: &str = "DROPS";
/// Name of the `u32` array (index: drop reason value) telling which reasons are counted.
pub const MAP_DROP_REASONS: &str = "DROP_REASONS";
/// Capacity of [`MAP_DROP_REASONS`]: reason values at or above it are never counted.
pub const DROP_REASONS_LEN: u32 = 512;
/// Default capacity of [`MAP_DROPS`].
pub const DEFAULT_DROPS_CAPACITY: u32 = 16_384;

/// Global (`u32`): byte offset of `sk_buff.head` (a pointer).
pub const GLOBAL_SKB_OFF_HEAD: &str = "SKB_OFF_HEAD";
/// Global (`u32`): byte offset of `sk_buff.network_header` (a `u16` offset from `head`).
pub const GLOBAL_SKB_OFF_NETWORK_HEADER: &str = "SKB_OFF_NETWORK_HEADER";
/// Global (`u32`): byte offset of `sk_buff.len` (a `u32`).
pub const GLOBAL_SKB_OFF_LEN: &str = "SKB_OFF_LEN";
/// Global (`u32`): 1 once userspace has set the offsets (the program does nothing before).
pub const GLOBAL_SKB_OFFSETS_SET: &str = "SKB_OFFSETS_SET";
/// Global (`u32`): the inode number of the network namespace whose drops are counted (the
/// namespace of `skb->dev`); 0 counts the drops of every namespace (the default; the program
/// then reads nothing of the namespace). A drop of a packet without a device is not counted
/// when the filter is set.
pub const GLOBAL_DROP_NETNS_INUM: &str = "DROP_NETNS_INUM";
/// Global (`u32`): byte offset of `sk_buff.dev` (a `struct net_device *`), used only with
/// [`GLOBAL_DROP_NETNS_INUM`].
pub const GLOBAL_SKB_OFF_DEV: &str = "SKB_OFF_DEV";
/// Global (`u32`): byte offset of `net_device.nd_net.net` (the `struct net *` of the device's
/// namespace), used only with [`GLOBAL_DROP_NETNS_INUM`].
pub const GLOBAL_NET_DEVICE_OFF_NET: &str = "NET_DEVICE_OFF_NET";
/// Global (`u32`): byte offset of `net.ns.inum` (the namespace's inode number, a `u32`), used
/// only with [`GLOBAL_DROP_NETNS_INUM`].
pub const GLOBAL_NET_OFF_NS_INUM: &str = "NET_OFF_NS_INUM";

/// A dropped packet's flow and reason, as the packet went (not canonical): `src` sent it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DropKey {
    /// Source address (v4-mapped for IPv4).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (host byte order; ICMP echo: the identifier; other ICMP: 0).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The kernel's `enum skb_drop_reason` value.
    pub reason: u32,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

/// Cumulative drops of one [`DropKey`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropValue {
    /// Packets dropped.
    pub packets: u64,
    /// Bytes (`skb->len`) dropped.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn drop_key_layout() {
        assert_eq!(size_of::<DropKey>(), 44);
        assert_eq!(offset_of!(DropKey, dst), 16);
        assert_eq!(offset_of!(DropKey, src_port), 32);
        assert_eq!(offset_of!(DropKey, dst_port), 34);
        assert_eq!(offset_of!(DropKey, reason), 36);
        assert_eq!(offset_of!(DropKey, proto), 40);
        assert_eq!(offset_of!(DropKey, family), 41);
        assert_eq!(size_of::<DropValue>(), 16);
    }
}
