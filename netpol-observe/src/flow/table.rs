//! A readable, aligned table of flow records (for terminals; JSON lines are for machines).

use std::fmt::Write;

use super::{Endpoint, FlowRecord};

const HEADERS: [&str; 9] = [
    "PROTO",
    "SRC",
    "DST",
    "STATE",
    "PKTS →",
    "PKTS ←",
    "BYTES →",
    "BYTES ←",
    "LAST SEEN",
];

/// Renders `flows` as a table with a header row, one row per flow, columns aligned.
/// Endpoints show their attribution (`ns/pod`, `node:…` or the subnet) before the address
/// when there is one.
pub fn render(flows: &[FlowRecord]) -> String {
    let rows: Vec<[String; 9]> = flows.iter().map(row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    line(&mut out, &HEADERS.map(str::to_owned), &widths);
    for r in &rows {
        line(&mut out, r, &widths);
    }
    out
}

fn line(out: &mut String, cells: &[String; 9], widths: &[usize; 9]) {
    let mut text = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths.iter()).enumerate() {
        let pad = w.saturating_sub(cell.chars().count());
        // Numbers right-aligned, text left-aligned.
        if (4..=7).contains(&i) {
            let _ = write!(text, "{}{}", " ".repeat(pad), cell);
        } else {
            let _ = write!(text, "{}{}", cell, " ".repeat(pad));
        }
        if i + 1 < cells.len() {
            text.push_str("  ");
        }
    }
    out.push_str(text.trim_end());
    out.push('\n');
}

fn endpoint(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (std::net::IpAddr::V6(ip), Some(p)) => format!("[{ip}]:{p}"),
        (ip, Some(p)) => format!("{ip}:{p}"),
        (ip, None) => ip.to_string(),
    };
    let who = match (&e.namespace, &e.pod, &e.node, &e.subnet) {
        (Some(ns), Some(pod), _, _) => Some(format!("{ns}/{pod}")),
        (_, _, Some(node), _) => Some(format!("node:{node}")),
        (_, _, _, Some(subnet)) => Some(subnet.clone()),
        _ => None,
    };
    match who {
        Some(w) => format!("{w} {addr}"),
        None => addr,
    }
}

fn row(f: &FlowRecord) -> [String; 9] {
    let p = f.packets.unwrap_or_default();
    let b = f.bytes.unwrap_or_default();
    [
        f.protocol.to_string(),
        endpoint(&f.src),
        endpoint(&f.dst),
        f.state.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        p.sent.to_string(),
        p.received.to_string(),
        b.sent.to_string(),
        b.received.to_string(),
        f.last_seen
            .map(|t| t.strftime("%H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into()),
    ]
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::flow::{Directional, FlowState, Protocol};

    #[test]
    fn renders_aligned_rows() {
        let mut a = FlowRecord::new(
            Protocol::Tcp,
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            Some(80),
        );
        a.src.port = Some(40000);
        a.state = Some(FlowState::Established);
        a.packets = Some(Directional {
            sent: 12,
            received: 10,
        });
        a.dst.namespace = Some("shop".into());
        a.dst.pod = Some("api-1".into());
        let mut b = FlowRecord::new(
            Protocol::Icmpv6,
            "fd00::1".parse::<IpAddr>().unwrap(),
            "fd00::2".parse::<IpAddr>().unwrap(),
            None,
        );
        b.state = Some(FlowState::Active);
        let text = render(&[a, b]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("PROTO   SRC"));
        assert!(lines[1].contains("10.0.0.1:40000"));
        assert!(lines[1].contains("shop/api-1 10.0.0.2:80"));
        assert!(lines[2].contains("fd00::1"));
        // The STATE column starts at the same offset on every line.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 11], "established");
        assert_eq!(&lines[2][col..col + 6], "active");
    }
}
