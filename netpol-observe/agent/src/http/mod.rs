//! The agent's HTTP API (axum on [`server`]):
//!
//! | path | answer | access |
//! |---|---|---|
//! | `GET /metrics` | the metrics, OpenMetrics when asked (`Accept`), else Prometheus text | open |
//! | `GET /healthz` | `200 ok` while the process serves | open |
//! | `GET /readyz` | `200 ready`, or `503` with what is missing, one item per line | open |
//! | `GET /api/v1/flows` | attributed flows with verdicts, JSON lines ([`crate::agent::ObservedFlow`]), streamed; query: `namespace`, `workload`, `verdict` (`allowed`, `denied`, `staged-allowed`, `staged-denied`), `since` (RFC 3339), `limit` (default and maximum [`MAX_FLOWS_PER_RESPONSE`]) | [`auth`] |
//! | `GET /api/v1/drift` | drift detection (`--drift-baseline`): one JSON object, [`crate::drift::DriftReport`] — the baseline file, its edge count, `learning_until`, `learning`, the drift edges (`src`, `dst`, `port`, `protocol`, `kind`, `first_seen`, `last_seen`, `flows`; at most [`crate::drift::MAX_DRIFT_ENTRIES`], oldest first) and `overflow` (drift flows of edges not listed); `404` when drift detection is off | [`auth`] (resource `flows`) |
//! | `GET /api/v1/recommendations` | least-privilege NetworkPolicies for the flows this agent holds, one multi-document YAML stream (the recommender's notes first, as `#` comments, among them the flows the policies in force denied, which get no allow rule); query: `namespace` (only that namespace's policies), `default_deny` (`true`/`false`, default `true`), `include_denied` (`true`/`false`, default `false`: learn the denied flows that never got through, as `recommend --include-denied`); `503` while no inventory is loaded | [`auth`] |
//!
//! A bad query parameter is a `400` naming it. `/api/v1/flows` answers with the most recent
//! `limit` matching flows (oldest change first) and the header [`TRUNCATED_HEADER`]`: true` when
//! more matched. The answer is streamed: the store is read in chunks of [`FLOWS_CHUNK`] flows,
//! each copied under the flows lock and serialised outside it, so neither the lock nor the
//! memory grows with the answer. At most [`MAX_API_REQUESTS`] `/api/v1` answers are in progress
//! at once; more get `503` with `Retry-After`.
//!
//! `/api/v1` is behind [`auth::ApiGuard`] (`--api-auth`): with `kubernetes`, a bearer token
//! checked by the API server (TokenReview, SubjectAccessReview on the virtual resources
//! `flows`/`recommendations` of `netpol-observe.io`). The server's timeouts and connection
//! bound are in [`server`].

pub mod auth;
pub mod client;
pub mod server;

use std::sync::Arc;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    agent::{AgentState, FlowId, FlowQuery},
    inventory::kubeapi::KubeAccess,
    recommend::{RecommendConfig, Recommendation, Recommender, RenderError, render_yaml},
};
use auth::{ApiAuth, ApiGuard, CacheLimits};

/// `Content-Type` of `/api/v1/flows`.
pub(crate) const JSONL_CONTENT_TYPE: &str = "application/x-ndjson";

/// `Content-Type` of `/api/v1/recommendations`.
pub(crate) const YAML_CONTENT_TYPE: &str = "application/yaml";

/// Most flows one `/api/v1/flows` answer holds: the default and the maximum of `limit` (a
/// larger `limit` is a `400`). The most recently changed flows are the ones sent.
pub(crate) const MAX_FLOWS_PER_RESPONSE: usize = 100_000;

/// Response header of `/api/v1/flows`: `true` when more flows matched than were sent.
pub const TRUNCATED_HEADER: &str = "x-netpol-observe-truncated";

/// Flows copied from the store (under its lock) and serialised per piece of a streamed
/// `/api/v1/flows` answer.
pub(crate) const FLOWS_CHUNK: usize = 256;

/// `/api/v1` answers in progress at once (streams included); more get `503`.
pub(crate) const MAX_API_REQUESTS: usize = 4;

/// The API's routes over the agent's state, `/api/v1` behind `guard`.
pub fn router(state: Arc<AgentState>, guard: Arc<ApiGuard>) -> Router {
    let api = Api {
        agent: Arc::clone(&state),
        slots: Arc::new(Semaphore::new(MAX_API_REQUESTS)),
    };
    let protected = Router::new()
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/recommendations", get(recommendations))
        .route("/api/v1/drift", get(drift))
        .with_state(api)
        .route_layer(middleware::from_fn_with_state(guard, auth::require));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(protected)
}

/// The guard of the agent's configuration: `none`, or the API server reached as the inventory
/// reaches it (`kubeconfig`, else the in-cluster identity).
pub(crate) fn guard_for(state: &AgentState) -> ApiGuard {
    let config = state.config();
    match config.api_auth() {
        ApiAuth::None => ApiGuard::open(),
        ApiAuth::Kubernetes => ApiGuard::kubernetes(
            KubeAccess::infer(config.kubeconfig.clone()),
            config.api_token_audiences.clone(),
            // The node's name as the agent knows it (flows carry the same): `NODE_NAME`, else
            // the host name.
            config.node_name.clone().or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            }),
            CacheLimits::default(),
        ),
    }
}

/// Serves the API on `listener` until `stop` is cancelled, within the default
/// [`server::ServerLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let guard = Arc::new(guard_for(&state));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, api_auth = %guard.mode(), "HTTP API listening");
    }
    server::serve(
        listener,
        router(state, guard),
        server::ServerLimits::default(),
        async move { stop.cancelled().await },
    )
    .await
}

/// State of the `/api/v1` routes.
#[derive(Debug, Clone)]
struct Api {
    agent: Arc<AgentState>,
    /// One permit per answer in progress.
    slots: Arc<Semaphore>,
}

impl Api {
    /// A slot for one answer, if one is free.
    fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }
}

/// The answer when every slot is taken.
fn busy() -> Response {
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("busy: {MAX_API_REQUESTS} API answers in progress, retry later\n"),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

async fn metrics(State(state): State<Arc<AgentState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match state.metrics().negotiate(accept) {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}\n", crate::report::Chain(&e)),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<Arc<AgentState>>) -> Response {
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(missing) => {
            let mut body = missing.join("\n");
            body.push('\n');
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

/// `/api/v1/drift`: the drift baseline's state and the drift edges seen
/// ([`crate::drift::DriftReport`], one JSON object); `404` when drift detection is off.
async fn drift(State(api): State<Api>) -> Response {
    let Some(_slot) = api.slot() else {
        return busy();
    };
    match api.agent.drift_report() {
        None => (
            StatusCode::NOT_FOUND,
            "drift detection is off: the agent runs without --drift-baseline (driftBaseline)\n",
        )
            .into_response(),
        Some(report) => match serde_json::to_string(&report) {
            Ok(mut body) => {
                body.push('\n');
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
    }
}

/// The query string of `/api/v1/flows` (strings, checked by [`FlowParams::into_query`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowParams {
    /// Namespace of either peer.
    pub namespace: Option<String>,
    /// Workload (or pod, subnet, node) name of either peer.
    pub workload: Option<String>,
    /// `allowed`, `denied`, `staged-allowed`, `staged-denied`.
    pub verdict: Option<String>,
    /// RFC 3339 time.
    pub since: Option<String>,
    /// Maximum number of flows.
    pub limit: Option<usize>,
}

impl FlowParams {
    /// [`Self::into_query`] without consuming the parameters.
    pub fn clone_query(&self) -> Result<FlowQuery, String> {
        FlowParams {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            verdict: self.verdict.clone(),
            since: self.since.clone(),
            limit: self.limit,
        }
        .into_query()
    }

    /// Checks the parameters; the error names the one at fault.
    pub(crate) fn into_query(self) -> Result<FlowQuery, String> {
        if let Some(v) = &self.verdict
            && !["allowed", "denied", "staged-allowed", "staged-denied"].contains(&v.as_str())
        {
            return Err(format!(
                "verdict={v:?}: expected allowed, denied, staged-allowed or staged-denied"
            ));
        }
        let since = match &self.since {
            Some(s) => Some(
                s.parse::<jiff::Timestamp>()
                    .map_err(|e| format!("since={s:?}: not an RFC 3339 time: {e}"))?,
            ),
            None => None,
        };
        Ok(FlowQuery {
            namespace: self.namespace,
            workload: self.workload,
            verdict: self.verdict,
            since,
            limit: self.limit,
        })
    }
}

async fn flows(
    State(api): State<Api>,
    params: Result<Query<FlowParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let mut query = match params.into_query() {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match query.limit {
        Some(n) if n > MAX_FLOWS_PER_RESPONSE => {
            return (
                StatusCode::BAD_REQUEST,
                format!("limit={n}: at most {MAX_FLOWS_PER_RESPONSE}\n"),
            )
                .into_response();
        }
        Some(_) => {}
        None => query.limit = Some(MAX_FLOWS_PER_RESPONSE),
    }
    let Some(slot) = api.slot() else {
        return busy();
    };
    let (ids, truncated) = api.agent.select_flows(&query);
    let stream = FlowStream {
        agent: api.agent,
        query,
        ids,
        next: 0,
        _slot: slot,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk()?;
        Some((chunk, s))
    }));
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSONL_CONTENT_TYPE),
    );
    headers.insert(
        TRUNCATED_HEADER,
        HeaderValue::from_static(if truncated { "true" } else { "false" }),
    );
    resp
}

/// The rest of a streamed `/api/v1/flows` answer.
struct FlowStream {
    agent: Arc<AgentState>,
    query: FlowQuery,
    ids: Vec<FlowId>,
    next: usize,
    /// Held until the answer is sent or dropped.
    _slot: OwnedSemaphorePermit,
}

impl FlowStream {
    /// The next chunk's JSON lines (`None`: done). Flows that left the store since the
    /// selection are skipped.
    fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.next >= self.ids.len() {
                return None;
            }
            let end = (self.next + FLOWS_CHUNK).min(self.ids.len());
            let flows = self
                .agent
                .observe_flows(&self.ids[self.next..end], &self.query);
            self.next = end;
            if flows.is_empty() {
                continue;
            }
            let mut buf = Vec::with_capacity(flows.len() * 1024);
            for f in &flows {
                if let Err(e) = crate::flow::jsonl::write_line(&mut buf, f) {
                    // Ends the answer early; the client sees a truncated chunked body.
                    tracing::error!("serialising a flow: {e}");
                    self.next = self.ids.len();
                    return Some(Err(std::io::Error::other(e.to_string())));
                }
            }
            return Some(Ok(Bytes::from(buf)));
        }
    }
}

/// The query string of `/api/v1/recommendations` (strings, checked by
/// [`RecommendParams::into_options`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecommendParams {
    /// Only the policies of this namespace (the flows of every namespace still count, so
    /// peers are complete).
    pub namespace: Option<String>,
    /// `true` (default) or `false`: write a `default-deny` policy per namespace.
    pub default_deny: Option<String>,
    /// `true` or `false` (default): learn the flows the policies in force denied that never
    /// got through ([`RecommendConfig::include_denied`]).
    pub include_denied: Option<String>,
}

/// Checked [`RecommendParams`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecommendOptions {
    /// Only the policies of this namespace.
    pub namespace: Option<String>,
    /// The recommender's configuration.
    pub config: RecommendConfig,
}

impl RecommendParams {
    /// Checks the parameters; the error names the one at fault.
    pub(crate) fn into_options(self) -> Result<RecommendOptions, String> {
        let flag = |name: &str, value: Option<&str>, default: bool| match value {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(format!("{name}={v:?}: expected true or false")),
        };
        let default_deny = flag("default_deny", self.default_deny.as_deref(), true)?;
        let include_denied = flag("include_denied", self.include_denied.as_deref(), false)?;
        Ok(RecommendOptions {
            namespace: self.namespace.filter(|n| !n.is_empty()),
            config: RecommendConfig {
                default_deny,
                include_denied,
                ..RecommendConfig::default()
            },
        })
    }
}

/// The body of `/api/v1/recommendations`: the notes as `# note:` comment lines, then the
/// policies (of `namespace` only, when given) as one multi-document YAML stream.
pub(crate) fn render_recommendation(
    rec: &Recommendation,
    namespace: Option<&str>,
) -> Result<String, RenderError> {
    let mut out = String::new();
    for note in &rec.notes {
        for line in note.lines() {
            out.push_str("# note: ");
            out.push_str(line);
            out.push('\n');
        }
    }
    let policies: Vec<_> = rec
        .policies
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)))
        .cloned()
        .collect();
    out.push_str(&render_yaml(&policies)?);
    Ok(out)
}

async fn recommendations(
    State(api): State<Api>,
    params: Result<Query<RecommendParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let options = match params
        .map_err(|e| e.to_string())
        .and_then(|Query(p)| p.into_options())
    {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let state = &api.agent;
    let Some(model) = state.model() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no inventory loaded yet: flows cannot be attributed, so no policies can be recommended\n",
        )
            .into_response();
    };
    let Some(_slot) = api.slot() else {
        return busy();
    };
    // Every flow held, copied chunk by chunk (the flows lock is held per chunk only); the
    // recommender needs the records, not the verdicts: it judges the denied ones with the
    // model's inventory, whose NetworkPolicies are the policies in force.
    let (ids, _) = state.select_flows(&FlowQuery::default());
    let mut flows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(FLOWS_CHUNK) {
        flows.extend(state.flow_records(chunk));
    }
    drop(ids);
    // The recommender is CPU-bound (self-check included): keep it off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let rec =
            Recommender::new(&model.inventory, model.subnets(), options.config).recommend(&flows);
        tracing::debug!(
            flows = rec.stats.flows,
            policies = rec.stats.policies,
            "recommendations served"
        );
        render_recommendation(&rec, options.namespace.as_deref())
    })
    .await;
    match rendered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, YAML_CONTENT_TYPE)], body).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}\n", crate::report::Chain(&e)),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("recommender task failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::AgentConfig,
        datapath::FlowUpdate,
        flow::{Directional, FlowRecord, Protocol},
    };
    use axum::body::Body;
    use tower_test_shim::call;

    mod tower_test_shim {
        use axum::{Router, body::Body, http::Request};

        pub(super) async fn call(router: Router, uri: &str, accept: Option<&str>) -> (u16, String) {
            use tower::ServiceExt;
            let mut req = Request::builder().uri(uri);
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            let resp = router
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
                .await
                .unwrap();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        }
    }

    fn open() -> Arc<ApiGuard> {
        Arc::new(ApiGuard::open())
    }

    fn state() -> Arc<AgentState> {
        let inv = crate::inventory::Inventory::from_yaml_str(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web-1, namespace: shop, labels: {app: web}}
  spec: {nodeName: node-1, containers: [{name: c, image: x}]}
  status: {podIP: 10.244.0.2, podIPs: [{ip: 10.244.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: db-1, namespace: data, labels: {app: db}}
  spec: {nodeName: node-1, containers: [{name: c, image: x}]}
  status: {podIP: 10.244.0.3, podIPs: [{ip: 10.244.0.3}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: data}
  spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
            "test",
        )
        .unwrap();
        let state = Arc::new(AgentState::new(AgentConfig::default()));
        let model =
            crate::agent::Model::new(Arc::new(inv), &crate::attribution::Subnets::default(), None)
                .unwrap();
        state.set_model(Arc::new(model));
        let mut r = FlowRecord::new(
            Protocol::Tcp,
            [10, 244, 0, 2].into(),
            [10, 244, 0, 3].into(),
            Some(5432),
        );
        r.src.port = Some(40000);
        state.on_update(&FlowUpdate {
            record: r,
            new: true,
            delta_packets: Directional {
                sent: 3,
                received: 0,
            },
            delta_bytes: Directional {
                sent: 180,
                received: 0,
            },
            ended: false,
            opened: true,
        });
        state
    }

    #[tokio::test]
    async fn flows_metrics_and_readiness() {
        let s = state();
        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/flows?namespace=data",
            None,
        )
        .await;
        assert_eq!(code, 200);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 1, "{body}");
        let f: crate::agent::ObservedFlow = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(f.flow.src.pod.as_deref(), Some("web-1"));
        assert_eq!(f.flow.dst.pod.as_deref(), Some("db-1"));
        let v = f.verdict.unwrap();
        assert!(!v.allowed);
        assert_eq!(v.ingress.policies, vec!["data/deny-all".to_owned()]);

        let (_, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/flows?verdict=allowed",
            None,
        )
        .await;
        assert_eq!(body, "");
        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/flows?verdict=maybe",
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("verdict=\"maybe\""), "{body}");
        let (code, _) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/flows?since=yesterday",
            None,
        )
        .await;
        assert_eq!(code, 400);

        let (code, body) = call(router(Arc::clone(&s), open()), "/metrics", None).await;
        assert_eq!(code, 200);
        assert!(body.contains(
            r#"netpol_observe_flows_total{src_namespace="shop",src_kind="Pod",src_workload="web-1",dst_namespace="data",dst_kind="Pod",dst_workload="db-1",dst_port="5432",protocol="TCP",verdict="denied"} 1"#
        ), "{body}");
        assert!(body.contains(r#"netpol_observe_flow_packets_total{src_namespace="shop",src_kind="Pod",src_workload="web-1",dst_namespace="data",dst_kind="Pod",dst_workload="db-1",dst_port="5432",protocol="TCP"} 3"#), "{body}");
        let (_, om) = call(
            router(Arc::clone(&s), open()),
            "/metrics",
            Some("application/openmetrics-text"),
        )
        .await;
        assert!(om.ends_with("# EOF\n"));

        let (code, body) = call(router(Arc::clone(&s), open()), "/readyz", None).await;
        assert_eq!(code, 503);
        assert!(
            body.contains("datapath and drop tracepoint not attached"),
            "{body}"
        );
        let (code, _) = call(router(s, open()), "/healthz", None).await;
        assert_eq!(code, 200);
        let _ = Body::empty();
    }

    fn policies(yaml: &str) -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
        crate::yaml::documents(yaml)
            .unwrap()
            .into_iter()
            .map(|d| d.value)
            .collect()
    }

    fn names(p: &[k8s_openapi::api::networking::v1::NetworkPolicy]) -> Vec<String> {
        p.iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect()
    }

    /// A flow the policies in force deny that never got through (web-1 knocking on db-1:22,
    /// `attempted`, no reply) gets no allow rule: the notes list it with its isolating policy;
    /// `include_denied=true` learns it.
    #[tokio::test]
    async fn recommendations_leave_out_flows_the_policies_in_force_denied() {
        let s = state();
        let mut knock = FlowRecord::new(
            Protocol::Tcp,
            [10, 244, 0, 2].into(),
            [10, 244, 0, 3].into(),
            Some(22),
        );
        knock.src.port = Some(40001);
        knock.state = Some(crate::flow::FlowState::Attempted);
        knock.packets = Some(Directional {
            sent: 2,
            received: 0,
        });
        s.on_update(&FlowUpdate {
            record: knock,
            new: true,
            delta_packets: Directional {
                sent: 2,
                received: 0,
            },
            delta_bytes: Directional {
                sent: 120,
                received: 0,
            },
            ended: false,
            opened: true,
        });
        let db_ports = |body: &str| -> Vec<serde_json::Value> {
            let db = policies(body)
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some("db-1-np"))
                .unwrap();
            let spec = serde_json::to_value(db.spec.unwrap()).unwrap();
            spec["ingress"][0]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].clone())
                .collect()
        };
        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/recommendations",
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(
                "# note: denied by the policies in force — review: shop/Pod/web-1 -> data/Pod/db-1:22/TCP (1 flow(s); ingress denied, isolated by data/deny-all): not learned: no allow rule written (--include-denied to learn it)\n"
            ),
            "{body}"
        );
        // The other flow (state and packets unknown: the test's record has neither) is kept.
        assert_eq!(db_ports(&body), [serde_json::json!(5432)], "{body}");
        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/recommendations?include_denied=true",
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("db-1:22/TCP (1 flow(s); ingress denied, isolated by data/deny-all): never got through; learned (--include-denied)"),
            "{body}"
        );
        assert_eq!(
            db_ports(&body),
            [serde_json::json!(22), serde_json::json!(5432)],
            "{body}"
        );
        let (code, body) = call(
            router(s, open()),
            "/api/v1/recommendations?include_denied=yes",
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("include_denied=\"yes\""), "{body}");
    }

    #[tokio::test]
    async fn recommendations_cover_the_agents_flows() {
        let s = state();
        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/recommendations",
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let all = policies(&body);
        assert_eq!(
            names(&all),
            [
                "data/default-deny",
                "data/db-1-np",
                "shop/default-deny",
                "shop/web-1-np"
            ]
        );
        let spec = |name: &str| {
            let p = all
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .unwrap();
            serde_json::to_value(p.spec.as_ref().unwrap()).unwrap()
        };
        assert_eq!(
            spec("db-1-np"),
            serde_json::json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                        "podSelector": {"matchLabels": {"app": "web"}}
                    }],
                    "ports": [{"port": 5432, "protocol": "TCP"}]
                }]
            })
        );
        assert_eq!(
            spec("web-1-np"),
            serde_json::json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{
                    "to": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
                        "podSelector": {"matchLabels": {"app": "db"}}
                    }],
                    "ports": [{"port": 5432, "protocol": "TCP"}]
                }]
            })
        );

        // Only one namespace, without default-deny: the same per-workload policy.
        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/recommendations?namespace=data&default_deny=false",
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let data = policies(&body);
        assert_eq!(names(&data), ["data/db-1-np"]);
        assert_eq!(data[0], all[1]);

        let (code, body) = call(
            router(Arc::clone(&s), open()),
            "/api/v1/recommendations?default_deny=maybe",
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("default_deny=\"maybe\""), "{body}");
        let (code, body) = call(
            router(s, open()),
            "/api/v1/recommendations?nmespace=x",
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("nmespace"), "{body}");

        // No inventory yet: nothing can be attributed.
        let empty = Arc::new(AgentState::new(AgentConfig::default()));
        let (code, body) = call(router(empty, open()), "/api/v1/recommendations", None).await;
        assert_eq!(code, 503);
        assert!(body.contains("no inventory loaded"), "{body}");
    }

    /// `GET uri` with `headers`: status, response headers, number of body frames, body.
    async fn request(
        router: Router,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, usize, String) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let mut req = http::Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = router
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, mut body) = resp.into_parts();
        let (mut frames, mut bytes) = (0, Vec::new());
        while let Some(f) = body.frame().await {
            if let Ok(data) = f.unwrap().into_data() {
                frames += 1;
                bytes.extend_from_slice(&data);
            }
        }
        (
            parts.status.as_u16(),
            parts.headers,
            frames,
            String::from_utf8(bytes).unwrap(),
        )
    }

    /// [`state`] plus `n` more flows from web-1 (source ports 20000…), each newer than the last.
    fn state_with_flows(n: u16) -> Arc<AgentState> {
        let s = state();
        for i in 0..n {
            let mut r = FlowRecord::new(
                Protocol::Tcp,
                [10, 244, 0, 2].into(),
                [10, 244, 0, 3].into(),
                Some(5432),
            );
            r.src.port = Some(20000 + i);
            s.on_update(&FlowUpdate {
                record: r,
                new: true,
                delta_packets: Directional::default(),
                delta_bytes: Directional::default(),
                ended: false,
                opened: true,
            });
        }
        s
    }

    fn src_ports(body: &str) -> Vec<u16> {
        body.lines()
            .map(|l| {
                let f: crate::agent::ObservedFlow = serde_json::from_str(l).unwrap();
                f.flow.src.port.unwrap()
            })
            .collect()
    }

    /// `/api/v1/flows` is streamed in chunks of [`FLOWS_CHUNK`] flows, equal to the store's
    /// query; `limit` keeps the most recent and the answer says when it cut flows off; a limit
    /// above the maximum is refused.
    #[tokio::test]
    async fn flows_are_streamed_in_chunks_and_bounded() {
        let s = state_with_flows(600);
        let (code, headers, frames, body) =
            request(router(Arc::clone(&s), open()), "/api/v1/flows", &[]).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(headers[TRUNCATED_HEADER], "false");
        assert_eq!(headers[header::CONTENT_TYPE], JSONL_CONTENT_TYPE);
        let ports = src_ports(&body);
        assert_eq!(ports.len(), 601);
        assert_eq!(
            frames,
            601usize.div_ceil(FLOWS_CHUNK),
            "one frame per chunk"
        );
        let whole: Vec<u16> = s
            .flows(&FlowQuery::default())
            .iter()
            .map(|f| f.flow.src.port.unwrap())
            .collect();
        assert_eq!(ports, whole, "same flows, same order as the store's query");
        let mut served = Vec::new();
        for l in body.lines() {
            served.push(serde_json::from_str::<crate::agent::ObservedFlow>(l).unwrap());
        }
        assert_eq!(served, s.flows(&FlowQuery::default()), "verdicts included");

        let (code, headers, _, body) = request(
            router(Arc::clone(&s), open()),
            "/api/v1/flows?limit=10",
            &[],
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(headers[TRUNCATED_HEADER], "true");
        assert_eq!(src_ports(&body), (20590..20600).collect::<Vec<u16>>());

        let (code, _, _, body) = request(
            router(Arc::clone(&s), open()),
            &format!("/api/v1/flows?limit={}", MAX_FLOWS_PER_RESPONSE + 1),
            &[],
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("limit=100001: at most 100000"), "{body}");
    }

    /// At most [`MAX_API_REQUESTS`] answers are in progress: an unread stream holds its slot,
    /// the next request gets `503`, and a slot frees when a stream is dropped.
    #[tokio::test]
    async fn api_answers_in_progress_are_bounded() {
        use tower::ServiceExt;
        let s = state_with_flows(2 * FLOWS_CHUNK as u16);
        let app = router(s, open());
        let get = |uri: &str| {
            http::Request::builder()
                .uri(uri)
                .body(Body::empty())
                .unwrap()
        };
        let mut held = Vec::new();
        for _ in 0..MAX_API_REQUESTS {
            let resp = app.clone().oneshot(get("/api/v1/flows")).await.unwrap();
            assert_eq!(resp.status(), 200);
            held.push(resp);
        }
        let resp = app.clone().oneshot(get("/api/v1/flows")).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let resp = app
            .clone()
            .oneshot(get("/api/v1/recommendations"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        // Metrics and probes are not API answers.
        let resp = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(resp.status(), 503, "not ready (no datapath), but answered");
        let resp = app.clone().oneshot(get("/metrics")).await.unwrap();
        assert_eq!(resp.status(), 200);
        held.pop();
        let resp = app.clone().oneshot(get("/api/v1/flows")).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}
