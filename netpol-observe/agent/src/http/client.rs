//! The client side of the agent's API (`netpol-observe flows --agent`, `recommend --agent`):
//! which bearer token to send, and how to read a refusal.
//!
//! Token, in this order ([`bearer_token`]): `--token-file`; in a pod
//! (`KUBERNETES_SERVICE_HOST` set), the pod's ServiceAccount token; the kubeconfig's static token
//! (`token` or `tokenFile` of the current context's user; `$KUBECONFIG`, else `~/.kube/config`;
//! an unusable kubeconfig is a warning, not an error).
//! Credentials from exec plugins or auth providers are not read: pass a token with
//! `--token-file` (`kubectl create token <serviceaccount> --audience netpol-observe`). Without
//! any, requests go without `Authorization` (enough for an agent with `--api-auth none`).
//!
//! The agent serves plain HTTP: a token sent to it crosses the network readable. Prefer short
//! tokens bound to the agent's audience (`--duration 10m --audience netpol-observe`), which the
//! API server itself does not accept.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, KubeconfigError};
use secrecy::ExposeSecret;

use crate::inventory::kubeapi::SERVICE_ACCOUNT_DIR;

/// A bearer token and where it came from (`Debug` does not show the token).
#[derive(Clone)]
pub struct BearerToken {
    token: String,
    /// Where it came from, for messages (`--token-file /path`, `the pod's ServiceAccount`,
    /// `kubeconfig`).
    pub source: String,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl BearerToken {
    /// A token given directly.
    pub fn new(token: impl Into<String>, source: impl Into<String>) -> BearerToken {
        BearerToken {
            token: token.into(),
            source: source.into(),
        }
    }

    /// The token.
    pub(crate) fn secret(&self) -> &str {
        &self.token
    }
}

/// Why no token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token file cannot be read.
    #[error("cannot read the token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token file holds no token.
    #[error("the token file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// The token to send to agents: `token_file`, else the pod's ServiceAccount token (in a pod),
/// else the kubeconfig's static token; `None` when there is none.
pub async fn bearer_token(token_file: Option<&Path>) -> Result<Option<BearerToken>, TokenError> {
    if let Some(path) = token_file {
        return Ok(Some(BearerToken::new(
            read_token(path)?,
            format!("--token-file {}", path.display()),
        )));
    }
    let sa = Path::new(SERVICE_ACCOUNT_DIR).join("token");
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && sa.is_file() {
        return Ok(Some(BearerToken::new(
            read_token(&sa)?,
            "the pod's ServiceAccount",
        )));
    }
    let config = match kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await {
        Ok(c) => c,
        // No kubeconfig at all: no token.
        Err(KubeconfigError::ReadConfig(..)) | Err(KubeconfigError::FindPath) => return Ok(None),
        // An agent without authentication needs no token: an unusable kubeconfig is only worth
        // a warning (the agent's 401, if any, says the rest).
        Err(e) => {
            tracing::warn!("no token from the kubeconfig: {e}");
            return Ok(None);
        }
    };
    if let Some(t) = &config.auth_info.token {
        return Ok(Some(BearerToken::new(
            t.expose_secret().to_owned(),
            "kubeconfig",
        )));
    }
    if let Some(file) = &config.auth_info.token_file {
        let path = PathBuf::from(file);
        return Ok(Some(BearerToken::new(
            read_token(&path)?,
            format!("kubeconfig tokenFile {}", path.display()),
        )));
    }
    Ok(None)
}

/// `GET url` with the token, if any.
pub fn get(
    client: &reqwest::Client,
    url: &str,
    token: Option<&BearerToken>,
) -> reqwest::RequestBuilder {
    let req = client.get(url);
    match token {
        Some(t) => req.bearer_auth(t.secret()),
        None => req,
    }
}

/// What to do about a refused request, appended to the agent's answer.
pub fn refusal_hint(status: reqwest::StatusCode, token: Option<&BearerToken>) -> Option<String> {
    match (status, token) {
        (reqwest::StatusCode::UNAUTHORIZED, None) => Some(
            "the agent wants a bearer token: --token-file FILE, e.g. from `kubectl create token \
             <serviceaccount> -n <namespace> --audience netpol-observe --duration 10m`"
                .to_owned(),
        ),
        (reqwest::StatusCode::UNAUTHORIZED, Some(t)) => Some(format!(
            "the token from {} was not accepted (expired, or not for the agent's audience)",
            t.source
        )),
        (reqwest::StatusCode::FORBIDDEN, Some(t)) => Some(format!(
            "the identity of the token from {} needs the ClusterRole netpol-observe-reader \
             (deploy/README.md)",
            t.source
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn token_files_are_trimmed_and_empty_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  abc.def\n").unwrap();
        let t = bearer_token(Some(&f)).await.unwrap().unwrap();
        assert_eq!(t.secret(), "abc.def");
        assert!(t.source.contains("--token-file"));
        assert!(!format!("{t:?}").contains("abc"), "Debug hides the token");
        std::fs::write(&f, "\n").unwrap();
        let err = bearer_token(Some(&f)).await.unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = bearer_token(Some(&dir.path().join("nope")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
