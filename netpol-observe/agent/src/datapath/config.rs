//! Configuration of the datapath: which interfaces to watch and how big the maps are.

use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use netpol_observe_ebpf::{DEFAULT_FLOW_CAPACITY, DEFAULT_RINGBUF_BYTES};

use super::AttachMode;

/// Interface name patterns attached by default: the host side of pod interfaces of common CNIs
/// (bridge/ptp `veth*`, Calico `cali*`, Cilium `lxc*`, Azure `azv*`, AWS VPC CNI `eni*`,
/// GKE `gke*`).
pub const DEFAULT_INCLUDE: &[&str] = &["veth*", "cali*", "lxc*", "azv*", "eni*", "gke*"];
/// Interface name patterns never attached by default (Cilium's own devices, loopback).
pub const DEFAULT_EXCLUDE: &[&str] = &["cilium_*", "lo"];

/// What the datapath attaches to and how it sizes and sweeps its maps.
#[derive(Debug, Clone, PartialEq)]
pub struct DatapathConfig {
    /// Interfaces to attach to: glob patterns (`*` any run of characters, `?` one byte,
    /// `[0-9]` a class, `{veth,cali}*` alternatives, `\` escapes; [`globset`] syntax).
    pub include: Vec<String>,
    /// Interfaces never attached even when an `include` pattern matches.
    pub exclude: Vec<String>,
    /// Capacity (max entries) of the kernel flow map (an LRU hash).
    pub flow_capacity: u32,
    /// Size of the ring buffer in bytes (a power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// How often the flow map is read into the userspace flow table.
    pub sweep_interval: Duration,
    /// A flow without packets for this long is removed from the kernel map and ended.
    pub idle_timeout: Duration,
    /// How long ended flows stay in [`super::Datapath::snapshot`].
    pub retention: Duration,
    /// Node name put into flow records (default: the host name).
    pub node_name: Option<String>,
    /// Let the kernel learn local pod addresses from packets leaving pod interfaces, in addition
    /// to those given with [`super::Datapath::set_local_endpoints`].
    pub learn_local_endpoints: bool,
    /// Forward the eBPF programs' `aya-log` messages (cold paths only) to `tracing`.
    pub ebpf_log: bool,
    /// How the programs are attached; `None`: [`AttachMode::for_this_kernel`].
    pub attach_mode: Option<AttachMode>,
    /// Copy DNS answers to pods (packets from port 53) to userspace
    /// ([`super::Datapath::subscribe_dns`]).
    pub capture_dns: bool,
    /// Size of the DNS-answer ring buffer in bytes (a power of two, at least 4096).
    pub dns_ringbuf_bytes: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            include: DEFAULT_INCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            exclude: DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            flow_capacity: DEFAULT_FLOW_CAPACITY,
            ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
            sweep_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            retention: Duration::from_secs(600),
            node_name: None,
            learn_local_endpoints: true,
            ebpf_log: false,
            attach_mode: None,
            capture_dns: true,
            dns_ringbuf_bytes: netpol_observe_ebpf::DEFAULT_DNS_RINGBUF_BYTES,
        }
    }
}

impl DatapathConfig {
    /// The default configuration watching only interfaces matching `include`.
    pub fn with_interfaces<S: Into<String>>(include: impl IntoIterator<Item = S>) -> Self {
        DatapathConfig {
            include: include.into_iter().map(Into::into).collect(),
            ..DatapathConfig::default()
        }
    }

    /// `include` and `exclude` compiled; an invalid pattern is an error naming it.
    pub(crate) fn interface_filter(&self) -> Result<InterfaceFilter, String> {
        InterfaceFilter::new(&self.include, &self.exclude)
    }

    /// Checks patterns, sizes and durations; returns what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.include.is_empty() {
            return Err("no interface pattern to include".into());
        }
        self.interface_filter()?;
        if self.flow_capacity == 0 {
            return Err("flow_capacity must be at least 1".into());
        }
        if !self.ringbuf_bytes.is_power_of_two() || self.ringbuf_bytes < 4096 {
            return Err(format!(
                "ringbuf_bytes {} must be a power of two of at least 4096",
                self.ringbuf_bytes
            ));
        }
        if !self.dns_ringbuf_bytes.is_power_of_two() || self.dns_ringbuf_bytes < 4096 {
            return Err(format!(
                "dns_ringbuf_bytes {} must be a power of two of at least 4096",
                self.dns_ringbuf_bytes
            ));
        }
        if self.sweep_interval.is_zero() {
            return Err("sweep_interval must be positive".into());
        }
        Ok(())
    }
}

/// The interface patterns of a [`DatapathConfig`], compiled once: an interface is attached
/// when an `include` pattern matches its name and no `exclude` pattern does.
#[derive(Debug, Clone)]
pub struct InterfaceFilter {
    include: GlobSet,
    exclude: GlobSet,
}

impl InterfaceFilter {
    /// Compiles the patterns; an invalid one is an error naming it.
    pub fn new(
        include: &[impl AsRef<str>],
        exclude: &[impl AsRef<str>],
    ) -> Result<InterfaceFilter, String> {
        Ok(InterfaceFilter {
            include: glob_set(include)?,
            exclude: glob_set(exclude)?,
        })
    }

    /// Whether an interface named `name` is attached.
    pub fn matches(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name)
    }

    /// Whether `pattern` names one interface (no wildcard, class, alternative or escape): the
    /// datapath requires such an interface to exist when it starts.
    pub(crate) fn is_literal(pattern: &str) -> bool {
        !pattern.contains(['*', '?', '[', '{', '\\'])
    }
}

/// One set of all `patterns`. Interface names hold no path separator, so `*` matches any
/// run of bytes.
fn glob_set(patterns: &[impl AsRef<str>]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let pattern = pattern.as_ref();
        let glob = GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("interface pattern {pattern:?}: {}", e.kind()))?;
        set.add(glob);
    }
    set.build().map_err(|e| format!("interface patterns: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob_match(pattern: &str, name: &str) -> bool {
        InterfaceFilter::new(&[pattern], &[] as &[&str])
            .unwrap()
            .matches(name)
    }

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth1234"));
        assert!(glob_match("veth*", "veth"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("a?c*z", "abcxyz"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("lo", "lo"));
        assert!(!glob_match("lo", "lo0"));
        // globset's classes and alternatives.
        assert!(glob_match("eth[0-3]", "eth2"));
        assert!(!glob_match("eth[0-3]", "eth7"));
        assert!(glob_match("{veth,cali}*", "cali1"));
        assert!(!glob_match("{veth,cali}*", "lxc1"));
    }

    #[test]
    fn defaults_cover_cnis_and_exclude_cilium_devices() {
        let f = DatapathConfig::default().interface_filter().unwrap();
        for name in ["veth9a1b", "cali12ab", "lxc0011", "azv1", "eni3f", "gke77"] {
            assert!(f.matches(name), "{name}");
        }
        for name in ["eth0", "cilium_host", "lo", "docker0", "cni0"] {
            assert!(!f.matches(name), "{name}");
        }
    }

    #[test]
    fn an_invalid_pattern_is_an_error_naming_it() {
        let include = DatapathConfig::with_interfaces(["veth*", "eth[0-"]);
        let err = include.validate().unwrap_err();
        assert!(err.contains(r#"interface pattern "eth[0-""#), "{err}");
        assert!(err.contains("unclosed character class"), "{err}");
        let exclude = DatapathConfig {
            exclude: vec!["{cilium_*".into()],
            ..DatapathConfig::default()
        };
        let err = exclude.validate().unwrap_err();
        assert!(err.contains(r#"interface pattern "{cilium_*""#), "{err}");
    }

    #[test]
    fn literal_patterns() {
        assert!(InterfaceFilter::is_literal("eth0"));
        for p in ["veth*", "a?", "eth[01]", "{a,b}", "a\\*"] {
            assert!(!InterfaceFilter::is_literal(p), "{p}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let c = DatapathConfig {
            ringbuf_bytes: 1000,
            ..DatapathConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("ringbuf_bytes"));
        assert!(DatapathConfig::default().validate().is_ok());
    }
}
