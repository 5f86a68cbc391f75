//! Who may read `/api/v1`: authentication and authorisation of the flows API, as
//! kube-rbac-proxy does it.
//!
//! With [`ApiAuth::Kubernetes`] a request to `/api/v1/*` must carry `Authorization: Bearer
//! <token>`. The agent asks the API server who the token belongs to (`TokenReview`,
//! `authentication.k8s.io/v1`, with the configured audiences) and whether that user may read
//! the resource (`SubjectAccessReview`, `authorization.k8s.io/v1`) — a *virtual* resource of the
//! API group [`API_GROUP`], never served by the API server:
//!
//! | path | SubjectAccessReview `resourceAttributes` |
//! |---|---|
//! | `/api/v1/flows`, `/api/v1/drift` | group `netpol-observe.io`, resource `flows`, verb `get`, name = the node's name |
//! | `/api/v1/recommendations` | group `netpol-observe.io`, resource `recommendations`, verb `get`, name = the node's name |
//!
//! so a ClusterRole rule `{apiGroups: [netpol-observe.io], resources: [flows], verbs: [get]}`
//! (the shipped `netpol-observe-reader`) grants reading every agent, and `resourceNames: [node-1]`
//! only that node's. No token: `401` (with `WWW-Authenticate: Bearer`); a token the API server
//! does not accept: `401`; an authenticated user without the permission: `403`; the API server
//! unreachable or slow: `503`. Decisions are cached per token and resource ([`CacheLimits`]:
//! allowed 30 s, refused 10 s, 1024 entries), and at most [`MAX_REVIEWS_IN_FLIGHT`] reviews run
//! at once, so a scraper or a client retrying does not hammer the API server. The agent's
//! ClusterRole needs `create` on `tokenreviews` and `subjectaccessreviews`
//! ([`REVIEW_PERMISSIONS`]).
//!
//! [`ApiAuth::None`] lets every request through (the standalone default, loopback only unless
//! explicitly allowed: [`crate::agent::AgentConfig::validate`]).

pub use crate::agent::config::ApiAuth;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use crate::{
    inventory::kubeapi::{self, KubeAccess, KubeAccessError},
    report::Chain,
};

/// The API group of the agent's virtual resources (`flows`, `recommendations`) in
/// SubjectAccessReviews and RBAC rules.
pub const API_GROUP: &str = "netpol-observe.io";

/// What the agent's own ClusterRole needs for [`ApiAuth::Kubernetes`], beyond the inventory's
/// watches: `(API group, resource, verb)`.
pub const REVIEW_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
];

/// At most this many TokenReviews/SubjectAccessReviews in flight at once; more requests wait.
pub(crate) const MAX_REVIEWS_IN_FLIGHT: usize = 8;

/// How long a review may take before the request is answered `503`.
pub(crate) const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtual resource a path of `/api/v1` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiResource {
    /// `/api/v1/flows`.
    Flows,
    /// `/api/v1/recommendations`.
    Recommendations,
}

impl ApiResource {
    /// The resource of an `/api/v1` path (`None`: not one of the API's).
    pub(crate) fn of_path(path: &str) -> Option<ApiResource> {
        match path.trim_end_matches('/') {
            // Drift edges are a summary of the flows: whoever may read these may read it.
            "/api/v1/flows" | "/api/v1/drift" => Some(ApiResource::Flows),
            "/api/v1/recommendations" => Some(ApiResource::Recommendations),
            _ => None,
        }
    }

    /// The resource's name in RBAC rules (`flows`, `recommendations`).
    pub fn name(self) -> &'static str {
        match self {
            ApiResource::Flows => "flows",
            ApiResource::Recommendations => "recommendations",
        }
    }
}

/// Why a request could not be checked (the API server is unreachable, refuses the agent's own
/// reviews, or answers too slowly): the request is answered `503`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No client for the API server could be built.
    #[error("no API server access to check tokens")]
    Access {
        /// Why.
        #[source]
        source: KubeAccessError,
    },
    /// The TokenReview failed (e.g. the agent may not create TokenReviews).
    #[error("TokenReview failed")]
    TokenReview {
        /// What kube said.
        #[source]
        source: kube::Error,
    },
    /// The SubjectAccessReview failed.
    #[error("SubjectAccessReview failed")]
    AccessReview {
        /// What kube said.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("the API server did not answer the {review} within {} s", REVIEW_TIMEOUT.as_secs())]
    Timeout {
        /// `TokenReview` or `SubjectAccessReview`.
        review: &'static str,
    },
}

/// The outcome of checking one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let through (`user` is `None` without authentication).
    Allowed {
        /// Who.
        user: Option<String>,
    },
    /// No token, or one the API server does not accept: `401`.
    Unauthenticated {
        /// Why (the API server's error, if any).
        reason: String,
    },
    /// An authenticated user without the permission: `403`.
    Forbidden {
        /// Who.
        user: String,
        /// The authoriser's reason, if any.
        reason: String,
    },
}

/// Bounds of the decision cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// How long an allowed decision is reused (default 30 s).
    pub allowed_ttl: Duration,
    /// How long a refusal (401, 403) is reused (default 10 s: a reader just bound to the role
    /// does not wait long).
    pub refused_ttl: Duration,
    /// Entries held (default 1024); when full, expired entries go, then the oldest.
    pub max_entries: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            allowed_ttl: Duration::from_secs(30),
            refused_ttl: Duration::from_secs(10),
            max_entries: 1024,
        }
    }
}

/// Decisions by (token, resource), each with its expiry.
#[derive(Debug)]
struct DecisionCache {
    limits: CacheLimits,
    entries: HashMap<(String, ApiResource), (Instant, Instant, Decision)>,
}

impl DecisionCache {
    fn get(&mut self, token: &str, resource: ApiResource, now: Instant) -> Option<Decision> {
        let key = (token.to_owned(), resource);
        match self.entries.get(&key) {
            Some((_, expires, d)) if *expires > now => Some(d.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, token: &str, resource: ApiResource, d: Decision, now: Instant) {
        if self.limits.max_entries == 0 {
            return;
        }
        let ttl = match d {
            Decision::Allowed { .. } => self.limits.allowed_ttl,
            _ => self.limits.refused_ttl,
        };
        if self.entries.len() >= self.limits.max_entries {
            self.entries.retain(|_, (_, expires, _)| *expires > now);
        }
        while self.entries.len() >= self.limits.max_entries {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (added, _, _))| *added)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries
            .insert((token.to_owned(), resource), (now, now + ttl, d));
    }
}

/// The API server client of [`ApiAuth::Kubernetes`], built on first use (and again after a
/// failure).
struct Reviewer {
    access: KubeAccess,
    client: tokio::sync::Mutex<Option<kube::Client>>,
    audiences: Vec<String>,
    /// The node's name: the `name` of the reviewed resource.
    node: Option<String>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer")
            .field("access", &self.access)
            .field("audiences", &self.audiences)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Reviewer {
    async fn client(&self) -> Result<kube::Client, AuthError> {
        let mut c = self.client.lock().await;
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let (client, connected) = kubeapi::client(&self.access)
            .await
            .map_err(|source| AuthError::Access { source })?;
        tracing::info!(server = %connected.server, via = %connected.via, "/api/v1 tokens are checked by the API server");
        *c = Some(client.clone());
        Ok(client)
    }

    async fn review(&self, token: &str, resource: ApiResource) -> Result<Decision, AuthError> {
        // Never closed: the semaphore lives as long as the reviewer.
        let _permit = self.in_flight.acquire().await;
        let client = self.client().await?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = tokio::time::timeout(
            REVIEW_TIMEOUT,
            Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthError::Timeout {
            review: "TokenReview",
        })?
        .map_err(|source| AuthError::TokenReview { source })?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let Some(name) = user
            .username
            .clone()
            .filter(|_| status.authenticated == Some(true))
        else {
            let mut reason = status
                .error
                .unwrap_or_else(|| "the API server does not accept the token".to_owned());
            if !self.audiences.is_empty() {
                reason.push_str(&format!(
                    " (this agent accepts tokens for the audience {}: kubectl create token \
                     <serviceaccount> --audience {})",
                    self.audiences.join(", "),
                    self.audiences[0]
                ));
            }
            return Ok(Decision::Unauthenticated { reason });
        };
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(name.clone()),
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    group: Some(API_GROUP.to_owned()),
                    resource: Some(resource.name().to_owned()),
                    verb: Some("get".to_owned()),
                    name: self.node.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = tokio::time::timeout(
            REVIEW_TIMEOUT,
            Api::<SubjectAccessReview>::all(client).create(&PostParams::default(), &sar),
        )
        .await
        .map_err(|_| AuthError::Timeout {
            review: "SubjectAccessReview",
        })?
        .map_err(|source| AuthError::AccessReview { source })?;
        let status = answer.status.unwrap_or_default();
        if status.allowed {
            Ok(Decision::Allowed { user: Some(name) })
        } else {
            let reason = status
                .reason
                .or(status.evaluation_error)
                .unwrap_or_default();
            Ok(Decision::Forbidden { user: name, reason })
        }
    }
}

/// The guard in front of `/api/v1`: lets requests through, or answers `401`/`403`/`503`.
#[derive(Debug)]
pub struct ApiGuard {
    reviewer: Option<Reviewer>,
    cache: Mutex<DecisionCache>,
}

impl ApiGuard {
    /// No authentication ([`ApiAuth::None`]).
    pub fn open() -> ApiGuard {
        ApiGuard {
            reviewer: None,
            cache: Mutex::new(DecisionCache {
                limits: CacheLimits::default(),
                entries: HashMap::new(),
            }),
        }
    }

    /// [`ApiAuth::Kubernetes`] through the API server reached by `access` (the client is built on
    /// first use). Tokens must be valid for one of `audiences` (none: the API server's own);
    /// `node` is the `name` in the SubjectAccessReview.
    pub fn kubernetes(
        access: KubeAccess,
        audiences: Vec<String>,
        node: Option<String>,
        limits: CacheLimits,
    ) -> ApiGuard {
        ApiGuard {
            reviewer: Some(Reviewer {
                access,
                client: tokio::sync::Mutex::new(None),
                audiences,
                node,
                in_flight: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            }),
            cache: Mutex::new(DecisionCache {
                limits,
                entries: HashMap::new(),
            }),
        }
    }

    /// [`Self::kubernetes`] with a client already built (tests, or a caller that has one).
    pub fn kubernetes_with_client(
        client: kube::Client,
        audiences: Vec<String>,
        node: Option<String>,
        limits: CacheLimits,
    ) -> ApiGuard {
        let guard = Self::kubernetes(KubeAccess::infer(None), audiences, node, limits);
        if let Some(r) = &guard.reviewer {
            // Not contended: the guard is not shared yet.
            if let Ok(mut c) = r.client.try_lock() {
                *c = Some(client);
            }
        }
        guard
    }

    /// The mode this guard enforces.
    pub fn mode(&self) -> ApiAuth {
        if self.reviewer.is_some() {
            ApiAuth::Kubernetes
        } else {
            ApiAuth::None
        }
    }

    /// Decides whether a request with these headers may read `resource`.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        resource: ApiResource,
    ) -> Result<Decision, AuthError> {
        let Some(reviewer) = &self.reviewer else {
            return Ok(Decision::Allowed { user: None });
        };
        let Some(token) = bearer(headers) else {
            return Ok(Decision::Unauthenticated {
                reason: "no bearer token (Authorization: Bearer <token>)".to_owned(),
            });
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token, resource, Instant::now());
        if let Some(d) = cached {
            return Ok(d);
        }
        let d = reviewer.review(token, resource).await?;
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token, resource, d.clone(), Instant::now());
        Ok(d)
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The middleware in front of `/api/v1` routes: [`ApiGuard::check`], then the route or the
/// refusal.
pub async fn require(State(guard): State<Arc<ApiGuard>>, req: Request, next: Next) -> Response {
    let Some(resource) = ApiResource::of_path(req.uri().path()) else {
        // Fail closed: a route behind the guard that names no resource is never served.
        return (StatusCode::NOT_FOUND, "no such API resource\n").into_response();
    };
    match guard.check(req.headers(), resource).await {
        Ok(Decision::Allowed { user }) => {
            if let Some(user) = user {
                tracing::debug!(%user, resource = resource.name(), "API request allowed");
            }
            next.run(req).await
        }
        Ok(Decision::Unauthenticated { reason }) => {
            tracing::debug!(resource = resource.name(), %reason, "API request unauthenticated");
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                format!("unauthorized: {reason}\n"),
            )
                .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"netpol-observe\""),
            );
            resp
        }
        Ok(Decision::Forbidden { user, reason }) => {
            tracing::info!(%user, resource = resource.name(), %reason, "API request forbidden");
            let mut body = format!(
                "forbidden: {user:?} may not get {}.{API_GROUP}",
                resource.name()
            );
            if !reason.is_empty() {
                body.push_str(&format!(" ({reason})"));
            }
            body.push_str(": bind it to the ClusterRole netpol-observe-reader\n");
            (StatusCode::FORBIDDEN, body).into_response()
        }
        Err(e) => {
            tracing::warn!(
                resource = resource.name(),
                "cannot check an API request: {}",
                Chain(&e)
            );
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token now: {}\n", Chain(&e)),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cache_expires_and_stays_bounded() {
        let limits = CacheLimits {
            allowed_ttl: Duration::from_secs(30),
            refused_ttl: Duration::from_secs(10),
            max_entries: 3,
        };
        let mut c = DecisionCache {
            limits,
            entries: HashMap::new(),
        };
        let t0 = Instant::now();
        let ok = Decision::Allowed {
            user: Some("u".into()),
        };
        let no = Decision::Forbidden {
            user: "v".into(),
            reason: String::new(),
        };
        c.insert("a", ApiResource::Flows, ok.clone(), t0);
        c.insert("b", ApiResource::Flows, no, t0);
        assert_eq!(c.get("a", ApiResource::Flows, t0), Some(ok.clone()));
        assert_eq!(c.get("a", ApiResource::Recommendations, t0), None);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            c.get("b", ApiResource::Flows, later),
            None,
            "refusals expire first"
        );
        assert_eq!(c.get("a", ApiResource::Flows, later), Some(ok.clone()));
        assert_eq!(
            c.get("a", ApiResource::Flows, t0 + Duration::from_secs(31)),
            None
        );
        for (i, t) in ["c", "d", "e", "f"].iter().enumerate() {
            c.insert(
                t,
                ApiResource::Flows,
                ok.clone(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.get("c", ApiResource::Flows, t0), None, "the oldest went");
        assert!(c.get("f", ApiResource::Flows, t0).is_some());
    }

    #[test]
    fn paths_name_their_resources() {
        assert_eq!(
            ApiResource::of_path("/api/v1/flows"),
            Some(ApiResource::Flows)
        );
        assert_eq!(
            ApiResource::of_path("/api/v1/drift"),
            Some(ApiResource::Flows)
        );
        assert_eq!(
            ApiResource::of_path("/api/v1/recommendations/"),
            Some(ApiResource::Recommendations)
        );
        assert_eq!(ApiResource::of_path("/metrics"), None);
    }

    /// A stand-in for the API server's review endpoints: `reader` may get flows on node-1,
    /// `other` nothing; any other token is not authenticated. Counts the reviews it answers and
    /// keeps the audiences asked for.
    #[derive(Debug, Default)]
    struct FakeApiServer {
        token_reviews: std::sync::atomic::AtomicUsize,
        access_reviews: std::sync::atomic::AtomicUsize,
        audiences: Mutex<Vec<Option<Vec<String>>>>,
    }

    async fn fake_api_server() -> (Arc<FakeApiServer>, kube::Client) {
        use axum::{Json, routing::post};
        use std::sync::atomic::Ordering;
        let fake = Arc::new(FakeApiServer::default());
        let f1 = Arc::clone(&fake);
        let f2 = Arc::clone(&fake);
        let app = axum::Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(move |Json(mut r): Json<TokenReview>| async move {
                    f1.token_reviews.fetch_add(1, Ordering::SeqCst);
                    f1.audiences.lock().unwrap().push(r.spec.audiences.clone());
                    let user = match r.spec.token.as_str() {
                        "reader-token" => Some("system:serviceaccount:t:reader"),
                        "other-token" => Some("system:serviceaccount:t:other"),
                        _ => None,
                    };
                    r.status = Some(k8s_openapi::api::authentication::v1::TokenReviewStatus {
                        authenticated: Some(user.is_some()),
                        error: user.is_none().then(|| "invalid bearer token".to_owned()),
                        user: user.map(|u| k8s_openapi::api::authentication::v1::UserInfo {
                            username: Some(u.to_owned()),
                            groups: Some(vec!["system:serviceaccounts".to_owned()]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    Json(r)
                }),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(move |Json(mut r): Json<SubjectAccessReview>| async move {
                    f2.access_reviews.fetch_add(1, Ordering::SeqCst);
                    let a = r.spec.resource_attributes.clone().unwrap_or_default();
                    let allowed = r.spec.user.as_deref() == Some("system:serviceaccount:t:reader")
                        && r.spec.groups.as_deref()
                            == Some(&["system:serviceaccounts".to_owned()][..])
                        && a.group.as_deref() == Some(API_GROUP)
                        && a.resource.as_deref() == Some("flows")
                        && a.verb.as_deref() == Some("get")
                        && a.name.as_deref() == Some("node-1");
                    r.status = Some(
                        k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus {
                            allowed,
                            reason: (!allowed).then(|| "no RBAC policy matched".to_owned()),
                            ..Default::default()
                        },
                    );
                    Json(r)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        crate::tls::install_crypto_provider();
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (fake, client)
    }

    /// No token and a token the API server refuses are 401, a user without the permission
    /// 403, the reader 200; decisions are cached per token and resource, so repeated requests
    /// make no further reviews; the audiences go into the TokenReview.
    #[tokio::test]
    async fn tokens_are_reviewed_by_the_api_server_and_decisions_cached() {
        use std::sync::atomic::Ordering;
        use tower::ServiceExt;
        let (fake, client) = fake_api_server().await;
        let guard = Arc::new(ApiGuard::kubernetes_with_client(
            client,
            vec!["netpol-observe".to_owned()],
            Some("node-1".to_owned()),
            CacheLimits::default(),
        ));
        assert_eq!(guard.mode(), ApiAuth::Kubernetes);
        let app = axum::Router::new()
            .route("/api/v1/flows", axum::routing::get(|| async { "flows\n" }))
            .route(
                "/api/v1/recommendations",
                axum::routing::get(|| async { "policies\n" }),
            )
            .route_layer(axum::middleware::from_fn_with_state(guard, require));
        let call = |path: &'static str, token: Option<&'static str>| {
            let app = app.clone();
            async move {
                let mut req = http::Request::builder().uri(path);
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let resp = app
                    .oneshot(req.body(axum::body::Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let www = resp.headers().get(header::WWW_AUTHENTICATE).cloned();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (status, www, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let (code, www, body) = call("/api/v1/flows", None).await;
        assert_eq!(code, 401, "{body}");
        assert_eq!(www.unwrap(), "Bearer realm=\"netpol-observe\"");
        assert_eq!(
            fake.token_reviews.load(Ordering::SeqCst),
            0,
            "no token, no review"
        );

        let (code, _, body) = call("/api/v1/flows", Some("forged")).await;
        assert_eq!(code, 401);
        assert!(
            body.contains("invalid bearer token") && body.contains("--audience netpol-observe"),
            "{body}"
        );

        let (code, _, body) = call("/api/v1/flows", Some("other-token")).await;
        assert_eq!(code, 403);
        assert!(
            body.contains("system:serviceaccount:t:other")
                && body.contains("flows.netpol-observe.io"),
            "{body}"
        );

        for _ in 0..5 {
            let (code, _, body) = call("/api/v1/flows", Some("reader-token")).await;
            assert_eq!((code, body.as_str()), (200, "flows\n"));
        }
        // The reader may read flows but not recommendations (the fake grants only flows).
        let (code, _, _) = call("/api/v1/recommendations", Some("reader-token")).await;
        assert_eq!(code, 403);
        for _ in 0..3 {
            assert_eq!(call("/api/v1/flows", Some("other-token")).await.0, 403);
            assert_eq!(call("/api/v1/flows", Some("forged")).await.0, 401);
        }
        // forged, other, reader (flows), reader (recommendations): one TokenReview each; a
        // SubjectAccessReview for each authenticated one.
        assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 4);
        assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 3);
        assert!(
            fake.audiences
                .lock()
                .unwrap()
                .iter()
                .all(|a| a.as_deref() == Some(&["netpol-observe".to_owned()][..]))
        );
    }

    /// The API server unreachable: 503 with Retry-After, nothing cached.
    #[tokio::test]
    async fn an_unreachable_api_server_is_a_503() {
        use tower::ServiceExt;
        crate::tls::install_crypto_provider();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = kube::Client::try_from(kube::Config::new(
            format!("http://127.0.0.1:{port}").parse().unwrap(),
        ))
        .unwrap();
        let guard = Arc::new(ApiGuard::kubernetes_with_client(
            client,
            Vec::new(),
            None,
            CacheLimits::default(),
        ));
        let app = axum::Router::new()
            .route("/api/v1/flows", axum::routing::get(|| async { "flows\n" }))
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::clone(&guard),
                require,
            ));
        let req = http::Request::builder()
            .uri("/api/v1/flows")
            .header("authorization", "Bearer reader-token")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        assert!(guard.cache.lock().unwrap().entries.is_empty());
    }
}
