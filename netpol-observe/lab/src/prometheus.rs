//! A real Prometheus in the lab: one instance started inside the first node's network
//! namespace, on its own loopback port, with its own configuration and data directory in the
//! output folder (never the machine's system Prometheus). It finds every node's agent
//! through file-based service discovery (a `file_sd_configs` targets file the lab writes, as
//! the Prometheus Operator or a hand-written scrape config would) and scrapes them every
//! second. The lab then asks it the query of `recommend --prometheus` and compares the
//! policies with those of `recommend --agent`.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    netns::NetnsError,
    servers,
    topology::{LabProcess, Topology},
};

/// Where the lab's Prometheus listens inside the node's namespace (the namespace is the lab's
/// own, so the port is free whatever runs on the host).
pub const PROMETHEUS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

/// The Prometheus folder inside the output folder: `prometheus.yml`, `targets.json`, `data/`.
pub(crate) const PROMETHEUS_DIR: &str = "prometheus";

/// The scrape (and file discovery refresh) interval.
pub(crate) const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// The scrape job of the agents.
pub(crate) const JOB: &str = "netpol-observe";

/// The environment variable naming the `prometheus` binary.
pub(crate) const PROMETHEUS_ENV: &str = "NETPOL_OBSERVE_PROMETHEUS";

/// Errors of the lab's Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// `--prometheus-bin` or `NETPOL_OBSERVE_PROMETHEUS` names no file.
    #[error("prometheus binary {0} not found")]
    Missing(PathBuf),
    /// A configuration file or the log could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start prometheus {program}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: NetnsError,
    },
    /// Prometheus exited.
    #[error("prometheus exited ({status}); see {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// Its log.
        log: PathBuf,
    },
    /// Prometheus did not become ready, or did not scrape every agent, in time.
    #[error("prometheus was not {what} within {timeout:?} (last answer: {last}); see {log}")]
    NotReady {
        /// What was awaited.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// The last answer or connection error.
        last: String,
        /// Its log.
        log: PathBuf,
    },
    /// An HTTP request to Prometheus failed.
    #[error("GET {path} from prometheus: {message}")]
    Http {
        /// The request path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The `prometheus` binary: `given` (`--prometheus-bin`), else `$NETPOL_OBSERVE_PROMETHEUS`,
/// else `prometheus` on `PATH`. `Ok(None)` when none was named and `PATH` has none; an error
/// when a named one does not exist.
pub fn find(given: Option<PathBuf>) -> Result<Option<PathBuf>, PrometheusError> {
    let named = given.or_else(|| std::env::var_os(PROMETHEUS_ENV).map(PathBuf::from));
    if let Some(path) = named {
        return if path.is_file() {
            Ok(Some(path))
        } else {
            Err(PrometheusError::Missing(path))
        };
    }
    Ok(std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    }))
}

/// `prometheus.yml`: one job scraping the targets of `targets_file` every [`SCRAPE_INTERVAL`].
pub fn config(targets_file: &Path) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    format!(
        "# Written by netpol-observe lab: the agents found through file-based service discovery.
global:
  scrape_interval: {secs}s
  evaluation_interval: {secs}s
scrape_configs:
  - job_name: {JOB}
    file_sd_configs:
      - files: [{targets:?}]
        refresh_interval: {secs}s
",
        targets = targets_file.display().to_string(),
    )
}

/// The `file_sd_configs` targets file: one group per agent (`host:port`) labelled with its
/// node, as Kubernetes service discovery labels a DaemonSet's pods.
pub fn targets(agents: &[(SocketAddr, &str)]) -> String {
    let list: Vec<serde_json::Value> = agents
        .iter()
        .map(|(addr, node)| {
            serde_json::json!({
                "targets": [addr.to_string()],
                "labels": {"node": node},
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The policies `recommend --agent` and `recommend --prometheus` gave in the lab
/// (`prometheus.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Prometheus' URL inside the node's namespace.
    pub url: String,
    /// The namespace to enter to reach it (`ip netns exec <netns> curl <url>`).
    pub netns: String,
    /// The query's window, in seconds.
    pub window_seconds: i64,
    /// `ns/name` of the policies recommended from the agent's flows.
    pub agent: Vec<String>,
    /// `ns/name` of the policies recommended from Prometheus' series.
    pub prometheus: Vec<String>,
    /// Whether both give the same policies (names and specs; evidence annotations aside).
    pub equal: bool,
    /// The policies that differ (`ns/name`), when not equal.
    pub differing: Vec<String>,
    /// The evidence flow counts (`netpol-observe.io/flows`) of the agents' policies, by
    /// `ns/name`.
    pub agent_flows: std::collections::BTreeMap<String, String>,
    /// The same of Prometheus' policies: equal when its counts are real flow counts.
    pub prometheus_flows: std::collections::BTreeMap<String, String>,
    /// The notes of parsing Prometheus' answer (series that could not be placed).
    pub notes: Vec<String>,
}

/// A running Prometheus in the node's namespace.
#[derive(Debug)]
pub struct PrometheusHandle {
    process: LabProcess,
    netns: String,
    log: PathBuf,
    started: Instant,
}

impl PrometheusHandle {
    /// Writes `dir/prometheus.yml` and `dir/targets.json` (the agents), starts `program` in
    /// the node's namespace on [`PROMETHEUS_LISTEN`] with its data in `dir/data`, logging to
    /// `dir/prometheus.log`, and waits (up to `timeout`) until it is ready and has scraped
    /// every agent.
    pub async fn start(
        topo: &Topology,
        program: &Path,
        dir: &Path,
        agents: &[(SocketAddr, &str)],
        timeout: Duration,
    ) -> Result<PrometheusHandle, PrometheusError> {
        let write = |path: PathBuf, text: &str| {
            std::fs::write(&path, text).map_err(|source| PrometheusError::Write { path, source })
        };
        // Absolute: Prometheus reads paths in its configuration relative to the configuration
        // file, and `--out` is often relative (`cargo xtask lab` uses `lab-out`).
        let dir = &std::path::absolute(dir).map_err(|source| PrometheusError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let data = dir.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|source| PrometheusError::Write {
                path: data.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(&data).map_err(|source| PrometheusError::Write {
            path: data.clone(),
            source,
        })?;
        let targets_file = dir.join("targets.json");
        write(targets_file.clone(), &targets(agents))?;
        let config_file = dir.join("prometheus.yml");
        write(config_file.clone(), &config(&targets_file))?;
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).map_err(|source| PrometheusError::Write {
            path: log.clone(),
            source,
        })?;
        let err_file = log_file
            .try_clone()
            .map_err(|source| PrometheusError::Write {
                path: log.clone(),
                source,
            })?;
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config_file.display()).into(),
            format!("--storage.tsdb.path={}", data.display()).into(),
            format!("--web.listen-address={PROMETHEUS_LISTEN}").into(),
            "--storage.tsdb.retention.time=1d".into(),
        ];
        let child = topo
            .spawn_logged_in(
                topo.node_netns(),
                program,
                &args,
                Stdio::from(log_file),
                Stdio::from(err_file),
            )
            .map_err(|source| PrometheusError::Spawn {
                program: program.to_path_buf(),
                source,
            })?;
        let mut handle = PrometheusHandle {
            process: LabProcess::new(child, "prometheus"),
            netns: topo.node_netns().to_string(),
            log,
            started: Instant::now(),
        };
        handle.wait_ready(timeout).await?;
        handle.wait_scraped(agents.len(), timeout).await?;
        Ok(handle)
    }

    fn exited(&mut self) -> Option<PrometheusError> {
        let status = self.process.exited()?;
        Some(PrometheusError::Exited {
            status: status.to_string(),
            log: self.log.clone(),
        })
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), PrometheusError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            let last = match self.get("/-/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(PrometheusError::NotReady {
                    what: "ready",
                    timeout,
                    last,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `count` targets of the job are up.
    async fn wait_scraped(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> Result<(), PrometheusError> {
        let deadline = Instant::now() + timeout;
        let query = format!("count(up{{job=\"{JOB}\"}} == 1)");
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            let last = match self.query(&query).await {
                Ok(body) if body.contains(&format!("\"{count}\"]")) => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(PrometheusError::NotReady {
                    what: "scraping every agent",
                    timeout,
                    last,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How long it has been running.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `GET path_and_query` on Prometheus: status code and body.
    pub async fn get(&self, path_and_query: &str) -> Result<(u16, String), PrometheusError> {
        servers::http_get(&self.netns, PROMETHEUS_LISTEN, path_and_query)
            .await
            .map_err(|e| PrometheusError::Http {
                path: path_and_query.to_owned(),
                message: e.to_string(),
            })
    }

    /// An instant query (`/api/v1/query`): the answer's body, requiring status 200.
    pub async fn query(&self, promql: &str) -> Result<String, PrometheusError> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        match self.get(&path).await? {
            (200, body) => Ok(body),
            (code, body) => Err(PrometheusError::Http {
                path,
                message: format!("status {code}: {}", body.trim()),
            }),
        }
    }

    /// Stops Prometheus with SIGTERM, waiting up to 5 s before killing it.
    pub async fn stop(self) {
        self.process.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_discovers_the_agents_from_the_targets_file() {
        let text = config(Path::new("/out/prometheus/targets.json"));
        let yaml: serde_json::Value = crate::yaml::from_str(&text).unwrap();
        assert_eq!(yaml["global"]["scrape_interval"], "1s");
        let job = &yaml["scrape_configs"][0];
        assert_eq!(job["job_name"], JOB);
        assert_eq!(
            job["file_sd_configs"][0]["files"][0],
            "/out/prometheus/targets.json"
        );
        let t: serde_json::Value = serde_json::from_str(&targets(&[
            (SocketAddr::from(([172, 31, 0, 1], 9965)), "n1"),
            (SocketAddr::from(([172, 31, 0, 2], 9965)), "n2"),
        ]))
        .unwrap();
        assert_eq!(t[0]["targets"][0], "172.31.0.1:9965");
        assert_eq!(t[0]["labels"]["node"], "n1");
        assert_eq!(t[1]["targets"][0], "172.31.0.2:9965");
        assert_eq!(t[1]["labels"]["node"], "n2");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("up{job=\"a b\"}[1m]"),
            "up%7Bjob%3D%22a%20b%22%7D%5B1m%5D"
        );
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
    }
}
