//! `lab --apiserver`: a real control plane for the lab. `etcd` and `kube-apiserver` run inside
//! the node's network namespace (a control-plane node: `127.0.0.1:6443` there), with their own
//! CA, RBAC and ServiceAccount tokens. The lab creates its objects through the API (as the
//! controllers and the kubelet would: ReplicaSets with owner references, Pods then their status,
//! EndpointSlices), applies the DaemonSet's RBAC (`deploy/kubernetes/base`), mints a token for
//! its ServiceAccount, and the agent runs in in-cluster mode with exactly that identity.
//!
//! The lab process itself stays in the root namespace: its API client opens its TCP
//! connections inside the node's namespace ([`NetnsConnector`]). The servers are processes of
//! the node's namespace, so the lab's teardown (and a later run's leftover cleanup) kills them
//! with everything else there.

use std::{
    collections::HashMap,
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    client::ConfigExt,
    config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    },
};
use serde_json::{Value, json};

use super::{
    netns::{self, NetnsError},
    servers,
    topology::Topology,
};

/// The API server's port inside the node's namespace (bound to 127.0.0.1 there).
pub(crate) const API_PORT: u16 = 6443;

/// The DaemonSet's identity objects, applied as they ship.
const AGENT_RBAC: [&str; 4] = [
    include_str!("../../../deploy/kubernetes/base/namespace.yaml"),
    include_str!("../../../deploy/kubernetes/base/serviceaccount.yaml"),
    include_str!("../../../deploy/kubernetes/base/clusterrole.yaml"),
    include_str!("../../../deploy/kubernetes/base/clusterrolebinding.yaml"),
];

/// The two binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `kube-apiserver`.
    pub apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

/// Errors of the lab's control plane; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// A binary is missing.
    #[error(
        "{what} not found at {path} (set --kube-apiserver/--etcd or NETPOL_OBSERVE_KUBE_APISERVER/NETPOL_OBSERVE_ETCD)"
    )]
    Missing {
        /// Which binary.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file of the run directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command (openssl, the servers) failed.
    #[error(transparent)]
    Command(#[from] NetnsError),
    /// The API server did not become ready.
    #[error("kube-apiserver not ready within {timeout:?}: {last}; see {log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The last error.
        last: String,
        /// Its log.
        log: PathBuf,
    },
    /// The API client could not be built.
    #[error("API client: {0}")]
    Client(String),
    /// An API request failed.
    #[error("{action}")]
    Api {
        /// What was being done (`create Pod shop/web-1`).
        action: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// An object cannot be sent (no kind, a kind the lab does not create).
    #[error("object {0}: not a kind the lab creates")]
    Object(String),
}

impl Binaries {
    /// `NETPOL_OBSERVE_KUBE_APISERVER`/`NETPOL_OBSERVE_ETCD` unless given, checked to exist.
    pub fn resolve(
        apiserver: Option<PathBuf>,
        etcd: Option<PathBuf>,
    ) -> Result<Binaries, ControlPlaneError> {
        let pick = |given: Option<PathBuf>, var: &str, name: &str| {
            given
                .or_else(|| std::env::var_os(var).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(name))
        };
        let b = Binaries {
            apiserver: pick(apiserver, "NETPOL_OBSERVE_KUBE_APISERVER", "kube-apiserver"),
            etcd: pick(etcd, "NETPOL_OBSERVE_ETCD", "etcd"),
        };
        for (what, path) in [("kube-apiserver", &b.apiserver), ("etcd", &b.etcd)] {
            if !path.is_file() {
                return Err(ControlPlaneError::Missing {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(b)
    }
}

/// Opens the API client's TCP connections inside a network namespace.
#[derive(Debug, Clone)]
struct NetnsConnector {
    netns: Arc<str>,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, std::io::Error>> + Send>>;

impl tower::Service<http::Uri> for NetnsConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let netns = Arc::clone(&self.netns);
        Box::pin(async move {
            let ip: IpAddr = uri
                .host()
                .unwrap_or_default()
                .parse()
                .map_err(std::io::Error::other)?;
            let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(443));
            let socket = servers::tcp_client_socket(&netns).map_err(std::io::Error::other)?;
            Ok(TokioIo::new(socket.connect(addr).await?))
        })
    }
}

/// A running control plane in the node's namespace and an admin client for it.
#[derive(Debug)]
pub(crate) struct ControlPlane {
    dir: PathBuf,
    client: ClientDebug,
    /// Server-assigned uids by `(kind, namespace, name)`, for owner references.
    uids: HashMap<(String, String, String), String>,
    _etcd: tokio::process::Child,
    _apiserver: tokio::process::Child,
}

/// `kube::Client` without `Debug`.
struct ClientDebug(Client);

impl std::fmt::Debug for ClientDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("kube::Client")
    }
}

fn write(path: &Path, text: &str) -> Result<(), ControlPlaneError> {
    std::fs::write(path, text).map_err(|source| ControlPlaneError::Write {
        path: path.to_owned(),
        source,
    })
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), ControlPlaneError> {
    let mut all = vec!["-C", dir.to_str().unwrap_or(".")];
    all.push("openssl");
    all.extend_from_slice(args);
    // `env -C DIR openssl ...`: the certificates are written into DIR.
    netns::command("env", &all, None)?;
    Ok(())
}

/// Writes into `pki`: a CA (`ca.crt`), the API server's certificate (`apiserver.crt`, for
/// 127.0.0.1, `address`, `service_ip` and the `kubernetes` Service names), an admin client
/// certificate in `system:masters` (`admin.crt`) and the ServiceAccount signing keys
/// (`sa.key`, `sa.pub`). Uses the `openssl` command. Also used by the end-to-end tests'
/// control plane.
pub fn certificates(
    pki: &Path,
    service_ip: Ipv4Addr,
    address: Ipv4Addr,
) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(pki).map_err(|source| ControlPlaneError::Write {
        path: pki.to_owned(),
        source,
    })?;
    let sh = |args: &[&str]| openssl(pki, args);
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=netpol-observe-lab-ca",
    ])?;
    write(
        &pki.join("server.ext"),
        &format!(
            "subjectAltName=IP:127.0.0.1,IP:{address},IP:{service_ip},DNS:localhost,DNS:kubernetes,\
             DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    write(&pki.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, subject, ext) in [
        ("apiserver", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=lab-admin", "client.ext"),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        sh(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ])?;
        sh(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            ext,
        ])?;
    }
    sh(&["genrsa", "-out", "sa.key", "2048"])?;
    sh(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), ControlPlaneError> {
    let err = |source| ControlPlaneError::Write {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::create(path).map_err(err)?;
    let g = f.try_clone().map_err(err)?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver in the first node's namespace (files under `dir`:
    /// `pki/`, logs, etcd data), the API server also on the node's `address` for the other
    /// nodes' agents, and waits until it is ready.
    pub(crate) async fn start(
        topo: &Topology,
        bins: &Binaries,
        dir: &Path,
        address: Ipv4Addr,
        service_cidr: Ipv4Net,
        timeout: Duration,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let pki = dir.join("pki");
        let _ = std::fs::remove_dir_all(dir);
        let first_service_ip = service_cidr.hosts().next().unwrap_or(Ipv4Addr::UNSPECIFIED);
        certificates(&pki, first_service_ip, address)?;
        let node = topo.node_netns();
        let (out, err) = log_file(&dir.join("etcd.log"))?;
        let etcd_args = etcd_args(&dir.join("etcd-data"), 2379, 2380);
        let etcd = topo.spawn_logged_in(node, &bins.etcd, &etcd_args, out, err)?;

        let log = dir.join("kube-apiserver.log");
        let (out, err) = log_file(&log)?;
        let api_args = apiserver_args(&pki, dir, 2379, address, API_PORT, service_cidr);
        let apiserver = topo.spawn_logged_in(node, &bins.apiserver, &api_args, out, err)?;

        let client = admin_client(node, &pki).await?;
        let start = Instant::now();
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| ControlPlaneError::Client(e.to_string()))?;
            let last = match client.request_text(req).await {
                Ok(_) => break,
                Err(e) => e.to_string(),
            };
            if start.elapsed() > timeout {
                return Err(ControlPlaneError::NotReady { timeout, last, log });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(elapsed = ?start.elapsed(), "kube-apiserver ready in the node's namespace");
        Ok(ControlPlane {
            dir: dir.to_owned(),
            client: ClientDebug(client),
            uids: HashMap::new(),
            _etcd: etcd,
            _apiserver: apiserver,
        })
    }

    /// The admin client (reaches the API server inside the node's namespace).
    pub(crate) fn client(&self) -> &Client {
        &self.client.0
    }

    /// Creates `objects` (the lab's inventory, in dependency order) as the controllers would:
    /// owner references point at the server's uids, each namespace gets its `default`
    /// ServiceAccount, status (Pods, Nodes) is set through the status subresource.
    pub(crate) async fn create_objects(
        &mut self,
        objects: &[Value],
    ) -> Result<(), ControlPlaneError> {
        for object in objects {
            self.create(object.clone()).await?;
            if object["kind"] == "Namespace" {
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                self.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": name}}))
                    .await?;
            }
        }
        Ok(())
    }

    /// Creates (or replaces) NetworkPolicies.
    pub(crate) async fn apply_policies(
        &mut self,
        policies: &[NetworkPolicy],
    ) -> Result<(), ControlPlaneError> {
        for p in policies {
            let value = serde_json::to_value(p)
                .map_err(|e| ControlPlaneError::Object(format!("NetworkPolicy: {e}")))?;
            self.create(value).await?;
        }
        Ok(())
    }

    /// Applies the DaemonSet's Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding,
    /// mints a token for the ServiceAccount (TokenRequest, one hour) and writes what a pod of
    /// the DaemonSet finds in its ServiceAccount directory (`token`, `ca.crt`, `namespace`)
    /// into `dir`.
    pub(crate) async fn agent_identity(&mut self, dir: &Path) -> Result<(), ControlPlaneError> {
        let mut account = None;
        for text in AGENT_RBAC {
            let value: Value = crate::yaml::from_str(text)
                .map_err(|e| ControlPlaneError::Object(format!("deploy RBAC: {e}")))?;
            if value["kind"] == "ServiceAccount" {
                account = Some((
                    value["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    value["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            self.create(value).await?;
        }
        let (ns, name) =
            account.ok_or_else(|| ControlPlaneError::Object("no ServiceAccount".into()))?;
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client().clone(), &ns);
        let request = json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}});
        let answer: Value = api
            .create_subresource("token", &name, &PostParams::default(), &request)
            .await
            .map_err(|source| ControlPlaneError::Api {
                action: format!("TokenRequest for ServiceAccount {ns}/{name}"),
                source,
            })?;
        let token = answer["status"]["token"].as_str().unwrap_or_default();
        std::fs::create_dir_all(dir).map_err(|source| ControlPlaneError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write(&dir.join("token"), token)?;
        write(&dir.join("namespace"), &ns)?;
        let ca = self.dir.join("pki/ca.crt");
        std::fs::copy(&ca, dir.join("ca.crt")).map_err(|source| ControlPlaneError::Write {
            path: dir.join("ca.crt"),
            source,
        })?;
        Ok(())
    }

    /// Creates one object (server-side apply, so a second apply replaces it), then its status.
    async fn create(&mut self, mut object: Value) -> Result<(), ControlPlaneError> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let (plural, namespaced) = resource_of(&kind)
            .ok_or_else(|| ControlPlaneError::Object(format!("{api_version} {kind}")))?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, &kind),
            plural,
        );
        let meta = &mut object["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
        if let Some(m) = meta.as_object_mut() {
            for server_owned in ["uid", "resourceVersion", "creationTimestamp"] {
                m.remove(server_owned);
            }
        }
        for owner in meta["ownerReferences"].as_array_mut().into_iter().flatten() {
            let key = (
                owner["kind"].as_str().unwrap_or_default().to_owned(),
                ns.clone(),
                owner["name"].as_str().unwrap_or_default().to_owned(),
            );
            if let Some(uid) = self.uids.get(&key) {
                owner["uid"] = json!(uid);
            }
        }
        let status = object
            .as_object_mut()
            .and_then(|o| o.remove("status"))
            .filter(|s| !s.is_null());
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(self.client().clone(), &ns, &resource)
        } else {
            Api::all_with(self.client().clone(), &resource)
        };
        let action = |verb: &str| {
            if ns.is_empty() {
                format!("{verb} {kind} {name}")
            } else {
                format!("{verb} {kind} {ns}/{name}")
            }
        };
        let params = PatchParams::apply("netpol-observe-lab").force();
        let created = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|source| ControlPlaneError::Api {
                action: action("apply"),
                source,
            })?;
        if let Some(uid) = created.metadata.uid {
            self.uids
                .insert((kind.clone(), ns.clone(), name.clone()), uid);
        }
        if let Some(status) = status
            && matches!(kind.as_str(), "Pod" | "Node")
        {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|source| ControlPlaneError::Api {
                action: action("set the status of"),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes the etcd data (tens of MB of preallocated log); logs and certificates stay.
    pub(crate) fn remove_data(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("etcd-data"));
    }
}

/// A single-member etcd on 127.0.0.1 (`client` and `peer` ports), its data in `data_dir`.
pub fn etcd_args(data_dir: &Path, client: u16, peer: u16) -> Vec<OsString> {
    vec![
        "--name=lab".into(),
        format!("--data-dir={}", data_dir.display()).into(),
        format!("--listen-client-urls=http://127.0.0.1:{client}").into(),
        format!("--advertise-client-urls=http://127.0.0.1:{client}").into(),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}").into(),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}").into(),
        format!("--initial-cluster=lab=http://127.0.0.1:{peer}").into(),
    ]
}

/// kube-apiserver as a cluster runs it, on `address`:`port` (and 127.0.0.1 when `address` is
/// not the loopback: every address of its namespace): TLS with the certificates of
/// [`certificates`] in `pki`, client certificates, ServiceAccount tokens, Node and RBAC
/// authorization, `service_cidr`, etcd on 127.0.0.1:`etcd`, its own files under `dir`; no
/// endpoint reconciler (no controllers).
pub fn apiserver_args(
    pki: &Path,
    dir: &Path,
    etcd: u16,
    address: Ipv4Addr,
    port: u16,
    service_cidr: Ipv4Net,
) -> Vec<OsString> {
    let p = |f: &str| pki.join(f).display().to_string();
    let bind = match address.is_loopback() {
        true => address,
        false => Ipv4Addr::UNSPECIFIED,
    };
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd}").into(),
        format!("--bind-address={bind}").into(),
        format!("--advertise-address={address}").into(),
        format!("--secure-port={port}").into(),
        format!("--tls-cert-file={}", p("apiserver.crt")).into(),
        format!("--tls-private-key-file={}", p("apiserver.key")).into(),
        format!("--client-ca-file={}", p("ca.crt")).into(),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", p("sa.pub")).into(),
        format!("--service-account-signing-key-file={}", p("sa.key")).into(),
        format!("--service-cluster-ip-range={service_cidr}").into(),
        "--authorization-mode=Node,RBAC".into(),
        format!("--cert-dir={}", dir.join("certs").display()).into(),
        "--endpoint-reconciler-type=none".into(),
    ]
}

/// The resource (plural) and scope of the kinds the lab creates.
fn resource_of(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "Namespace" => ("namespaces", false),
        "Node" => ("nodes", false),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Pod" => ("pods", true),
        "Service" => ("services", true),
        "Deployment" => ("deployments", true),
        "StatefulSet" => ("statefulsets", true),
        "DaemonSet" => ("daemonsets", true),
        "ReplicaSet" => ("replicasets", true),
        "Job" => ("jobs", true),
        "CronJob" => ("cronjobs", true),
        "EndpointSlice" => ("endpointslices", true),
        "NetworkPolicy" => ("networkpolicies", true),
        _ => return None,
    })
}

/// An admin client (client certificate) for the API server in `netns`.
async fn admin_client(netns: &str, pki: &Path) -> Result<Client, ControlPlaneError> {
    netpol_observe_agent::tls::install_crypto_provider();
    let p = |f: &str| Some(pki.join(f).display().to_string());
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "lab".into(),
            cluster: Some(Cluster {
                server: Some(format!("https://127.0.0.1:{API_PORT}")),
                certificate_authority: p("ca.crt"),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "admin".into(),
            auth_info: Some(AuthInfo {
                client_certificate: p("admin.crt"),
                client_key: p("admin.key"),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "lab".into(),
            context: Some(Context {
                cluster: "lab".into(),
                user: Some("admin".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("lab".into()),
        ..Kubeconfig::default()
    };
    let client_err = |e: String| ControlPlaneError::Client(e);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| client_err(e.to_string()))?;
    let https = config
        .rustls_https_connector_with_connector(NetnsConnector {
            netns: Arc::from(netns),
        })
        .map_err(|e| client_err(e.to_string()))?;
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let auth = config.auth_layer().map_err(|e| client_err(e.to_string()))?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// What the agent of the lab needs in in-cluster mode: where the API server is (seen from the
/// node's namespace) and the ServiceAccount directory to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InCluster {
    /// The ServiceAccount files (`token`, `ca.crt`, `namespace`).
    pub service_account_dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST`/`PORT` as seen from the node's namespace.
    pub api: SocketAddr,
}
