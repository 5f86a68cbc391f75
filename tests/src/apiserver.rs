//! A real control plane for the end-to-end tests: `etcd` and `kube-apiserver` on loopback, run
//! as a cluster runs them (the certificates and flags of `netpol_observe_lab::control_plane`,
//! which `lab --apiserver` uses too) (TLS with their own CA, client-certificate admin, RBAC + Node
//! authorization, ServiceAccount token issuance and validation, a Service CIDR), with no
//! controllers: the tests create what controllers would (ReplicaSets, Pods and their status,
//! EndpointSlices).
//!
//! The binaries come from `$NETPOL_OBSERVE_KUBE_APISERVER` and `$NETPOL_OBSERVE_ETCD`, else
//! `../shared/k8s/bin/` next to the workspace. Everything lives in a run directory under the
//! system temp dir named after the test; it is removed on drop (also on panic), and a killed
//! run's processes and directory are removed by the next run of the same test (pid files).
//! The servers also die with the test thread that started them (`PR_SET_PDEATHSIG`).

use std::{
    io::Write,
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netpol_observe_lab::control_plane;

/// The two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver`.
    pub apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

impl Binaries {
    /// The binaries if present. Absent: outside CI the test is skipped with a message (`None`);
    /// under `CI=true` it fails, naming what is missing.
    pub fn find(test: &str) -> Option<Binaries> {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s/bin");
        let pick = |var: &str, name: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| shared.join(name))
        };
        let b = Binaries {
            apiserver: pick("NETPOL_OBSERVE_KUBE_APISERVER", "kube-apiserver"),
            etcd: pick("NETPOL_OBSERVE_ETCD", "etcd"),
        };
        let missing: Vec<String> = [&b.apiserver, &b.etcd]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            return Some(b);
        }
        let msg = format!(
            "{test}: needs kube-apiserver and etcd, missing {} (set NETPOL_OBSERVE_KUBE_APISERVER \
             and NETPOL_OBSERVE_ETCD, or put them in ../shared/k8s/bin)",
            missing.join(", ")
        );
        if crate::ci() {
            panic!("CI=true: {msg}");
        }
        eprintln!("SKIPPED {msg}");
        None
    }
}

/// A running etcd + kube-apiserver; stopped and removed on drop.
#[derive(Debug)]
pub struct ApiServer {
    bins: Binaries,
    /// The run directory (certificates, etcd data, logs, kubeconfig).
    pub dir: PathBuf,
    /// The API server's secure port on 127.0.0.1.
    pub port: u16,
    etcd_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the processes recorded in `dir/*.pid` by an earlier, killed run, then removes `dir`.
fn remove_leftovers(dir: &Path) {
    for name in ["apiserver.pid", "etcd.pid"] {
        if let Ok(pid) = std::fs::read_to_string(dir.join(name))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // Only if it is still one of our binaries (the pid may have been reused).
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let exe = exe.to_string_lossy();
            if exe.ends_with("kube-apiserver") || exe.ends_with("etcd") {
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Makes the child die with the thread that spawned it.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl ApiServer {
    /// Starts etcd and the API server for test `name` (a short unique name) and waits until
    /// `/readyz` answers (up to two minutes on a loaded machine).
    pub fn start(bins: &Binaries, name: &str) -> Result<ApiServer> {
        let dir = std::env::temp_dir().join(format!("netpol-observe-apiserver-{name}"));
        remove_leftovers(&dir);
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        control_plane::certificates(&pki, Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::LOCALHOST)?;
        let mut server = ApiServer {
            bins: bins.clone(),
            port: free_port()?,
            etcd_port: free_port()?,
            dir,
            etcd: None,
            apiserver: None,
        };
        server.start_etcd()?;
        server.start_apiserver()?;
        std::fs::write(
            server.kubeconfig(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \
                 \"https://127.0.0.1:{}\", certificate-authority: \"{}\"}}\nusers:\n- name: \
                 admin\n  user: {{client-certificate: \"{}\", client-key: \"{}\"}}\ncontexts:\n- \
                 name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
                server.port,
                pki.join("ca.crt").display(),
                pki.join("admin.crt").display(),
                pki.join("admin.key").display()
            ),
        )?;
        server.wait_ready()?;
        Ok(server)
    }

    fn start_etcd(&mut self) -> Result<()> {
        let peer = free_port()?;
        let mut cmd = Command::new(&self.bins.etcd);
        cmd.args(control_plane::etcd_args(
            &self.dir.join("etcd-data"),
            self.etcd_port,
            peer,
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(self.dir.join("logs/etcd.log"))?);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting etcd")?;
        std::fs::write(self.dir.join("etcd.pid"), child.id().to_string())?;
        self.etcd = Some(child);
        Ok(())
    }

    /// Starts (or restarts) the API server on the same port, certificates and etcd, without
    /// waiting for it.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bins.apiserver);
        cmd.args(control_plane::apiserver_args(
            &self.dir.join("pki"),
            &self.dir,
            self.etcd_port,
            Ipv4Addr::LOCALHOST,
            self.port,
            "10.96.0.0/16".parse()?,
        ))
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("logs/kube-apiserver.log"))?,
        );
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting kube-apiserver")?;
        std::fs::write(self.dir.join("apiserver.pid"), child.id().to_string())?;
        self.apiserver = Some(child);
        Ok(())
    }

    /// Stops the API server only (etcd keeps the cluster's state), as an outage would.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the API server's `/readyz` answers `ok` (admin identity).
    pub fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"], None)?;
            if out.status.success() {
                return Ok(());
            }
            if let Some(c) = self.apiserver.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "kube-apiserver exited ({status}); see {}",
                    self.dir.join("logs/kube-apiserver.log").display()
                );
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("kube-apiserver not ready after 120 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The cluster CA (what a pod finds in `ca.crt`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// Runs `kubectl ARGS` as admin, `stdin` fed if given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("running kubectl (Debian package kubernetes-client)")?;
        if let Some(input) = stdin
            && let Some(mut w) = child.stdin.take()
        {
            w.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs `kubectl ARGS` as admin and fails with its stderr when it does not succeed.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of a YAML/JSON stream.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.kubectl_ok(&["apply", "-f", "-"], Some(yaml))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `deploy/kubernetes/base` rendered by `kubectl kustomize`, as JSON objects.
pub fn base_objects() -> Vec<serde_json::Value> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&base)
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize: {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Empty documents are skipped.
    serde_saphyr::from_slice_multiple(&out.stdout)
        .unwrap_or_else(|e| panic!("kubectl kustomize printed no YAML: {e}"))
}

/// The objects of these kinds.
pub fn of_kind<'a>(objects: &'a [serde_json::Value], kinds: &[&str]) -> Vec<&'a serde_json::Value> {
    objects
        .iter()
        .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or("")))
        .collect()
}

/// A `v1 List` of `items` (what `kubectl apply -f -` takes).
pub fn list(items: &[&serde_json::Value]) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Where a pod finds its ServiceAccount files.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The agent binary run as the DaemonSet runs it; killed on drop (its log printed when the
/// test panics).
#[derive(Debug)]
pub struct DaemonSetAgent {
    /// The process (taken by a test that stops it itself).
    pub child: Option<Child>,
    /// Its loopback listener.
    pub listen: std::net::SocketAddr,
    /// Its log (stderr).
    pub log: PathBuf,
    _sa: tempfile::TempDir,
}

impl Drop for DaemonSetAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- agent log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }
}

impl ApiServer {
    /// Starts the agent with exactly the DaemonSet's identity, arguments and files (its RBAC
    /// objects applied by the caller): a token minted for its ServiceAccount (TokenRequest), the
    /// cluster CA and namespace bind-mounted at [`SA_DIR`] in the agent's own mount namespace
    /// (nothing changes for the rest of the machine), `KUBERNETES_SERVICE_HOST`/`PORT`, the
    /// DaemonSet's arguments with the ConfigMap's files from `dir/etc`, listening on a free
    /// loopback port instead of every address; then the test's `extra` arguments. Logs (at
    /// `log_filter`) to `dir/agent.log`. A failed set-up fails the test, naming the step.
    #[allow(clippy::expect_used)]
    pub fn start_daemonset_agent(
        &self,
        dir: &Path,
        extra: &[&str],
        log_filter: &str,
        stdout: Stdio,
    ) -> DaemonSetAgent {
        let objects = base_objects();
        let ds = of_kind(&objects, &["DaemonSet"])[0];
        let sa_name = ds["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        let ns = ds["metadata"]["namespace"].as_str().expect("namespace");
        let token = self
            .kubectl_ok(
                &["create", "token", sa_name, "-n", ns, "--duration=1h"],
                None,
            )
            .expect("a token for the agent");
        let sa = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(sa.path().join(name), text).expect("ServiceAccount file")
        };
        write("token", token.trim());
        write("namespace", ns);
        std::fs::copy(self.ca(), sa.path().join("ca.crt")).expect("ca.crt");

        // The ConfigMap's files, mounted at /etc/netpol-observe in the DaemonSet.
        let cm = of_kind(&objects, &["ConfigMap"])
            .into_iter()
            .find(|o| o["metadata"]["name"] == "netpol-observe-config")
            .expect("the agent's ConfigMap");
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).expect("etc");
        for (file, text) in cm["data"].as_object().expect("data") {
            std::fs::write(etc.join(file), text.as_str().unwrap_or_default()).expect("file");
        }
        let container = &ds["spec"]["template"]["spec"]["containers"][0];
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], crate::http::free_port()));
        let mut saw_listen = false;
        let args: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| {
                let a = a.as_str().unwrap_or_default();
                if a.starts_with("--listen") {
                    // The DaemonSet listens on every address; the test on a free loopback port.
                    assert_eq!(a, "--listen=0.0.0.0:9965");
                    saw_listen = true;
                    format!("--listen={listen}")
                } else {
                    a.replace("/etc/netpol-observe", &etc.display().to_string())
                }
            })
            .collect();
        assert!(saw_listen && args[0] == "agent", "{args:?}");

        std::fs::create_dir_all(SA_DIR).expect("the ServiceAccount mount point");
        let log = dir.join("agent.log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount --bind '{}' {SA_DIR} && exec \"$0\" \"$@\"",
                sa.path().display()
            ))
            .arg(crate::bin())
            .args(&args)
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", self.port.to_string())
            .env("NODE_NAME", "node-1")
            .env("NETPOL_OBSERVE_LOG", log_filter)
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).expect("agent.log"));
        DaemonSetAgent {
            child: Some(cmd.spawn().expect("the agent")),
            listen,
            log,
            _sa: sa,
        }
    }
}

/// The objects of a `kubectl get … -o json` list as they were sent: without what the API server
/// adds (uid, resourceVersion, generation, creationTimestamp, managedFields, status).
pub fn as_sent<T: serde::de::DeserializeOwned>(list_json: &str) -> Result<Vec<T>> {
    let list: serde_json::Value = serde_json::from_str(list_json).context("a JSON list")?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .map(|mut item| {
            if let Some(meta) = item["metadata"].as_object_mut() {
                for field in [
                    "uid",
                    "resourceVersion",
                    "generation",
                    "creationTimestamp",
                    "managedFields",
                ] {
                    meta.remove(field);
                }
            }
            if let Some(obj) = item.as_object_mut() {
                obj.remove("status");
            }
            serde_json::from_value(item).context("an object of the requested type")
        })
        .collect()
}
