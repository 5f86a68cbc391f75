//! How the agent reaches the API server: a kubeconfig, or the in-cluster identity a pod gets
//! (the ServiceAccount token and CA under [`SERVICE_ACCOUNT_DIR`] and
//! `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`).
//!
//! Order, as `kubectl` and client-go do in a pod: an explicit kubeconfig (`--kubeconfig` or
//! `$KUBECONFIG`) first; else the in-cluster identity when `KUBERNETES_SERVICE_HOST` is set; else
//! `~/.kube/config`. In-cluster, the token file is re-read by kube (bound tokens rotate hourly)
//! and so is the CA bundle. The rustls crypto provider is installed before any client is built
//! ([`crate::tls`]).

use std::path::{Path, PathBuf};

use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, KubeconfigError, NamedAuthInfo,
    NamedCluster, NamedContext,
};

/// Where a pod's ServiceAccount token, CA bundle and namespace are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAccess {
    /// `--kubeconfig PATH` (or `$KUBECONFIG`), else in-cluster, else `~/.kube/config`.
    Infer {
        /// An explicit kubeconfig file.
        kubeconfig: Option<PathBuf>,
    },
    /// The in-cluster identity: `KUBERNETES_SERVICE_HOST`/`PORT` and the ServiceAccount files
    /// in `service_account_dir` (`token`, `ca.crt`, `namespace`).
    InCluster {
        /// Normally [`SERVICE_ACCOUNT_DIR`].
        service_account_dir: PathBuf,
    },
}

impl KubeAccess {
    /// [`KubeAccess::Infer`] with an optional explicit kubeconfig.
    pub fn infer(kubeconfig: Option<PathBuf>) -> KubeAccess {
        KubeAccess::Infer { kubeconfig }
    }
}

/// Why no client could be built; each names what was tried.
#[derive(Debug, thiserror::Error)]
pub enum KubeAccessError {
    /// The kubeconfig file is unusable.
    #[error("kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What kube said.
        #[source]
        source: KubeconfigError,
    },
    /// An in-cluster setting is missing or unusable.
    #[error("in-cluster identity: {what}")]
    InCluster {
        /// What is missing (an environment variable or a file, named).
        what: String,
        /// The underlying error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The in-cluster identity's files do not form a usable configuration.
    #[error("in-cluster identity from {dir}")]
    InClusterConfig {
        /// The ServiceAccount directory.
        dir: PathBuf,
        /// What kube said.
        #[source]
        source: KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster identity was found.
    #[error(
        "no Kubernetes API access: no --kubeconfig/$KUBECONFIG, KUBERNETES_SERVICE_HOST is not \
         set (not in a pod), and ~/.kube/config is unusable"
    )]
    Nothing {
        /// Why `~/.kube/config` was not usable.
        #[source]
        source: KubeconfigError,
    },
    /// The client cannot be built from the configuration (TLS set-up, proxy...).
    #[error("building the API client")]
    Client {
        /// What kube said.
        #[source]
        source: kube::Error,
    },
}

/// The API server's address and the configuration used, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// `https://host:port` of the API server.
    pub server: String,
    /// Which configuration was used (`in-cluster`, `kubeconfig PATH`).
    pub via: String,
}

/// Builds a client for `access` (no request is made: connection problems show up in the
/// watches). Installs the rustls crypto provider first.
pub async fn client(access: &KubeAccess) -> Result<(kube::Client, Connected), KubeAccessError> {
    crate::tls::install_crypto_provider();
    let (config, via) = config(access).await?;
    let server = config.cluster_url.to_string();
    let client =
        kube::Client::try_from(config).map_err(|source| KubeAccessError::Client { source })?;
    Ok((
        client,
        Connected {
            server: server.trim_end_matches('/').to_owned(),
            via,
        },
    ))
}

async fn config(access: &KubeAccess) -> Result<(kube::Config, String), KubeAccessError> {
    match access {
        KubeAccess::InCluster {
            service_account_dir,
        } => Ok((
            in_cluster(service_account_dir).await?,
            "in-cluster".to_owned(),
        )),
        KubeAccess::Infer { kubeconfig } => {
            let explicit = kubeconfig
                .clone()
                .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty());
            if let Some(path) = explicit {
                return from_file(&path).await;
            }
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                return Ok((
                    in_cluster(Path::new(SERVICE_ACCOUNT_DIR)).await?,
                    "in-cluster".to_owned(),
                ));
            }
            match kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await {
                Ok(c) => Ok((c, "~/.kube/config".to_owned())),
                Err(source) => Err(KubeAccessError::Nothing { source }),
            }
        }
    }
}

async fn from_file(path: &Path) -> Result<(kube::Config, String), KubeAccessError> {
    let err = |source| KubeAccessError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kc = Kubeconfig::read_from(path).map_err(err)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(err)?;
    Ok((config, format!("kubeconfig {}", path.display())))
}

/// The in-cluster configuration from the environment and `dir`, built as a kubeconfig (so kube
/// parses the CA and refreshes the token file) plus the CA file for kube's CA reloading.
async fn in_cluster(dir: &Path) -> Result<kube::Config, KubeAccessError> {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| KubeAccessError::InCluster {
                what: format!("{name} is not set"),
                source: None,
            })
    };
    let host = env("KUBERNETES_SERVICE_HOST")?;
    let port = env("KUBERNETES_SERVICE_PORT")?;
    let server = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    let (token, ca) = (dir.join("token"), dir.join("ca.crt"));
    for file in [&token, &ca] {
        std::fs::metadata(file).map_err(|source| KubeAccessError::InCluster {
            what: format!("cannot read {}", file.display()),
            source: Some(source),
        })?;
    }
    let namespace = std::fs::read_to_string(dir.join("namespace"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "in-cluster".into(),
            cluster: Some(Cluster {
                server: Some(server),
                certificate_authority: Some(ca.display().to_string()),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "service-account".into(),
            auth_info: Some(AuthInfo {
                token_file: Some(token.display().to_string()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "in-cluster".into(),
            context: Some(Context {
                cluster: "in-cluster".into(),
                user: Some("service-account".into()),
                namespace,
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("in-cluster".into()),
        ..Kubeconfig::default()
    };
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| KubeAccessError::InClusterConfig {
                dir: dir.to_owned(),
                source,
            })?;
    config.root_cert_file = Some(ca);
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A CA certificate (self-signed, valid until 2126): only parsed, never used to verify.
    const CA: &str = include_str!("../../../tests/data/test-ca.crt");

    /// Both cases in one test: they set process environment variables.
    #[tokio::test]
    async fn clients_build_from_a_kubeconfig_and_from_the_in_cluster_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), CA).unwrap();
        std::fs::write(dir.path().join("token"), "a-token").unwrap();
        std::fs::write(dir.path().join("namespace"), "netpol-observe").unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
                 https://127.0.0.1:6443\n    certificate-authority: {}\nusers:\n- name: u\n  \
                 user:\n    token: a-token\ncontexts:\n- name: x\n  context: {{cluster: c, user: \
                 u}}\ncurrent-context: x\n",
                dir.path().join("ca.crt").display()
            ),
        )
        .unwrap();
        // No provider installed by the test: `client` must install one (without it, kube's
        // rustls set-up panics when more than one provider is compiled in).
        let (_, c) = client(&KubeAccess::infer(Some(kubeconfig.clone())))
            .await
            .unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert_eq!(c.via, format!("kubeconfig {}", kubeconfig.display()));

        // SAFETY-free: edition 2024 makes these unsafe; no other test reads them.
        unsafe {
            std::env::set_var("KUBERNETES_SERVICE_HOST", "10.96.0.1");
            std::env::set_var("KUBERNETES_SERVICE_PORT", "443");
        }
        let access = KubeAccess::InCluster {
            service_account_dir: dir.path().to_owned(),
        };
        let (_, c) = client(&access).await.unwrap();
        assert_eq!(c.server, "https://10.96.0.1:443");
        assert_eq!(c.via, "in-cluster");
        let (config, _) = config(&access).await.unwrap();
        assert_eq!(config.default_namespace, "netpol-observe");
        assert_eq!(config.root_cert_file, Some(dir.path().join("ca.crt")));
        assert_eq!(config.root_cert.map(|c| c.len()), Some(1));

        // A missing token is named.
        std::fs::remove_file(dir.path().join("token")).unwrap();
        let Err(err) = client(&access).await else {
            panic!("a client without a token");
        };
        let err = err.to_string();
        assert!(err.contains("token"), "{err}");
        unsafe {
            std::env::set_var("KUBERNETES_SERVICE_HOST", "fd00::1");
        }
        std::fs::write(dir.path().join("token"), "a-token").unwrap();
        let (_, c) = client(&access).await.unwrap();
        assert_eq!(c.server, "https://[fd00::1]:443");
        unsafe {
            std::env::remove_var("KUBERNETES_SERVICE_HOST");
            std::env::remove_var("KUBERNETES_SERVICE_PORT");
        }
    }
}
