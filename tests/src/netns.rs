//! Network namespaces as pods: a netns with a veth whose host side stays in the root
//! namespace, either enslaved to a bridge (L2, like bridge CNIs) or routed (a /32 route and
//! proxy ARP on the host side, like Calico).
//!
//! Every object is named by the caller (names must be unique per test, ≤ 15 characters for
//! interfaces) and removed on drop, also when the test panics.
//!
//! ```no_run
//! use netpol_observe_e2e::netns::{Bridge, Pod};
//! let br = Bridge::new("tbr0", "10.70.0.1/24".parse().unwrap(), "fd70::1/64".parse().unwrap()).unwrap();
//! let a = Pod::on_bridge("t-a", "tha0", &br, "10.70.0.2".parse().unwrap(), "fd70::2".parse().unwrap()).unwrap();
//! let addr = a.run(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap().local_addr().unwrap());
//! ```

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

/// Runs `ip ARGS...`, failing with the command and its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(|_| ())
}

/// Runs a command, failing with the command line and its stderr when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// An IPv4 or IPv6 prefix in `addr/len` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (a, l) = s.split_once('/').context("expected ADDRESS/LENGTH")?;
        Ok(Cidr {
            addr: a.parse().with_context(|| format!("bad address in {s}"))?,
            len: l
                .parse()
                .with_context(|| format!("bad prefix length in {s}"))?,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A Linux bridge in the root namespace with a gateway address per family. Deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    /// Interface name.
    pub name: String,
    /// Gateway address of the bridge (IPv4).
    pub v4: Cidr,
    /// Gateway address of the bridge (IPv6).
    pub v6: Cidr,
}

impl Bridge {
    /// Creates bridge `name` with the given gateway addresses and brings it up.
    pub fn new(name: &str, v4: Cidr, v6: Cidr) -> Result<Bridge> {
        let _ = ip(&["link", "del", name]);
        ip(&["link", "add", name, "type", "bridge"])?;
        let br = Bridge {
            name: name.to_owned(),
            v4,
            v6,
        };
        ip(&["addr", "add", &v4.to_string(), "dev", name])?;
        ip(&["-6", "addr", "add", &v6.to_string(), "dev", name, "nodad"])?;
        ip(&["link", "set", name, "up"])?;
        Ok(br)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// A pod: a network namespace whose `eth0` is a veth peer of `host_if` in the root namespace.
/// Deleting the namespace on drop also deletes the veth pair and any route to it.
#[derive(Debug)]
pub struct Pod {
    /// Namespace name (under `/run/netns`).
    pub netns: String,
    /// Host-side interface name.
    pub host_if: String,
    /// The pod's IPv4 address.
    pub v4: Ipv4Addr,
    /// The pod's IPv6 address.
    pub v6: Ipv6Addr,
    routes: Vec<String>,
}

impl Pod {
    fn create(netns: &str, host_if: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<Pod> {
        let _ = ip(&["netns", "del", netns]);
        let _ = ip(&["link", "del", host_if]);
        ip(&["netns", "add", netns])?;
        let pod = Pod {
            netns: netns.to_owned(),
            host_if: host_if.to_owned(),
            v4,
            v6,
            routes: Vec::new(),
        };
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        pod.ip(&["link", "set", "lo", "up"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        Ok(pod)
    }

    /// A pod attached to `bridge`, addressed in the bridge's subnets, default routes via the
    /// bridge.
    pub fn on_bridge(
        netns: &str,
        host_if: &str,
        bridge: &Bridge,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> Result<Pod> {
        let pod = Pod::create(netns, host_if, v4, v6)?;
        ip(&["link", "set", host_if, "master", &bridge.name])?;
        ip(&["link", "set", host_if, "up"])?;
        pod.ip(&[
            "addr",
            "add",
            &format!("{v4}/{}", bridge.v4.len),
            "dev",
            "eth0",
        ])?;
        pod.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/{}", bridge.v6.len),
            "dev",
            "eth0",
            "nodad",
        ])?;
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            &bridge.v4.addr.to_string(),
        ])?;
        pod.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &bridge.v6.addr.to_string(),
        ])?;
        Ok(pod)
    }

    /// A routed pod (IPv4): `v4/32` on `eth0`, default route via the link-local gateway
    /// 169.254.1.1 answered by proxy ARP on the host side, a host route `v4/32 dev host_if`.
    /// Turns on IPv4 forwarding in the root namespace (left on: other tests may rely on it).
    pub fn routed(netns: &str, host_if: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<Pod> {
        let mut pod = Pod::create(netns, host_if, v4, v6)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp"), "1")
            .context("enabling proxy_arp")?;
        // Answer ARP for the gateway at once (the default delays proxy replies up to 0.8 s).
        std::fs::write(
            format!("/proc/sys/net/ipv4/neigh/{host_if}/proxy_delay"),
            "0",
        )
        .context("setting proxy_delay")?;
        ip(&["link", "set", host_if, "up"])?;
        let route = format!("{v4}/32");
        ip(&["route", "add", &route, "dev", host_if])?;
        pod.routes.push(route);
        pod.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
        pod.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        Ok(pod)
    }

    /// Runs `ip ARGS...` inside the pod.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs a command inside the pod (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["netns", "exec", self.netns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that entered the pod's network namespace: sockets it creates
    /// belong to the pod (and keep doing so when moved to other threads).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.netns);
        let handle = std::thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("entering {path}: {e:#}"));
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Like [`Pod::run`] without waiting: the thread's handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("entering {path}: {e:#}"));
            f()
        })
    }

    /// Host-side interface index.
    pub fn host_ifindex(&self) -> Result<u32> {
        let s = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.host_if))
            .with_context(|| format!("reading the ifindex of {}", self.host_if))?;
        s.trim().parse().context("parsing ifindex")
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace descriptor affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Pod {
    fn drop(&mut self) {
        for r in &self.routes {
            let _ = ip(&["route", "del", r]);
        }
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// A route in the root namespace (e.g. a blackhole), deleted on drop.
#[derive(Debug)]
pub struct Route {
    spec: Vec<String>,
}

impl Route {
    /// `ip route add SPEC...`.
    pub fn add(spec: &[&str]) -> Result<Route> {
        let mut args = vec!["route", "add"];
        args.extend_from_slice(spec);
        ip(&args)?;
        Ok(Route {
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
        })
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        let mut args = vec!["route", "del"];
        args.extend(self.spec.iter().map(String::as_str));
        let _ = ip(&args);
    }
}

/// The TC programs attached to `dev`: classic filters (`tc filter show`) and tcx programs
/// (queried from the kernel; `bpftool net` of older bpftool releases does not list tcx).
/// Empty when nothing is attached, for asserting that nothing was left behind.
pub fn attachments(dev: &str) -> Result<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut text = String::new();
    for dir in ["ingress", "egress"] {
        if let Ok(out) = run("tc", &["filter", "show", "dev", dev, dir]) {
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    for (ty, dir) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        let (_, progs) = SchedClassifier::query_tcx(dev, ty)
            .with_context(|| format!("querying tcx {dir} programs of {dev}"))?;
        for p in progs {
            text.push_str(&format!(
                "tcx {dir} {} id {}\n",
                p.name_as_str().unwrap_or("?"),
                p.id()
            ));
        }
    }
    Ok(text)
}
