//! The agent's HTTP API (axum):
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | the metrics, OpenMetrics when asked (`Accept`), else Prometheus text |
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /readyz` | `200 ready`, or `503` with what is missing, one item per line |
//! | `GET /api/v1/flows` | attributed flows with verdicts, JSON lines ([`crate::agent::ObservedFlow`]); query: `namespace`, `workload`, `verdict` (`allowed`, `denied`, `staged-allowed`, `staged-denied`), `since` (RFC 3339), `limit` |
//! | `GET /api/v1/recommendations` | least-privilege NetworkPolicies for the flows this agent holds, one multi-document YAML stream (the recommender's notes first, as `#` comments); query: `namespace` (only that namespace's policies), `default_deny` (`true`/`false`, default `true`); `503` while no inventory is loaded |
//!
//! A bad query parameter is a `400` naming it.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::{
    agent::{AgentState, FlowQuery},
    flow::FlowRecord,
    recommend::{RecommendConfig, Recommendation, Recommender, RenderError, render_yaml},
};

/// `Content-Type` of `/api/v1/flows`.
pub const JSONL_CONTENT_TYPE: &str = "application/x-ndjson";

/// `Content-Type` of `/api/v1/recommendations`.
pub const YAML_CONTENT_TYPE: &str = "application/yaml";

/// The API's routes over the agent's state.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/recommendations", get(recommendations))
        .with_state(state)
}

/// Serves the API on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn metrics(State(state): State<Arc<AgentState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match state.metrics().negotiate(accept) {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
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
    pub fn into_query(self) -> Result<FlowQuery, String> {
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
    State(state): State<Arc<AgentState>>,
    params: Result<Query<FlowParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let query = match params.into_query() {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let mut body = Vec::new();
    for f in state.flows(&query) {
        if let Err(e) = crate::flow::jsonl::write_line(&mut body, &f) {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    }
    ([(header::CONTENT_TYPE, JSONL_CONTENT_TYPE)], body).into_response()
}

/// The query string of `/api/v1/recommendations` (strings, checked by
/// [`RecommendParams::into_options`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendParams {
    /// Only the policies of this namespace (the flows of every namespace still count, so
    /// peers are complete).
    pub namespace: Option<String>,
    /// `true` (default) or `false`: write a `default-deny` policy per namespace.
    pub default_deny: Option<String>,
}

/// Checked [`RecommendParams`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecommendOptions {
    /// Only the policies of this namespace.
    pub namespace: Option<String>,
    /// The recommender's configuration.
    pub config: RecommendConfig,
}

impl RecommendParams {
    /// Checks the parameters; the error names the one at fault.
    pub fn into_options(self) -> Result<RecommendOptions, String> {
        let default_deny = match self.default_deny.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(format!("default_deny={v:?}: expected true or false")),
        };
        Ok(RecommendOptions {
            namespace: self.namespace.filter(|n| !n.is_empty()),
            config: RecommendConfig {
                default_deny,
                ..RecommendConfig::default()
            },
        })
    }
}

/// The body of `/api/v1/recommendations`: the notes as `# note:` comment lines, then the
/// policies (of `namespace` only, when given) as one multi-document YAML stream.
pub fn render_recommendation(
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
    State(state): State<Arc<AgentState>>,
    params: Result<Query<RecommendParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let options = match params
        .map_err(|e| e.to_string())
        .and_then(|Query(p)| p.into_options())
    {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(model) = state.model() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no inventory loaded yet: flows cannot be attributed, so no policies can be recommended\n",
        )
            .into_response();
    };
    let flows: Vec<FlowRecord> = state
        .flows(&FlowQuery::default())
        .into_iter()
        .map(|f| f.flow)
        .collect();
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
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
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

        pub async fn call(router: Router, uri: &str, accept: Option<&str>) -> (u16, String) {
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
        });
        state
    }

    #[tokio::test]
    async fn flows_metrics_and_readiness() {
        let s = state();
        let (code, body) = call(router(s.clone()), "/api/v1/flows?namespace=data", None).await;
        assert_eq!(code, 200);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 1, "{body}");
        let f: crate::agent::ObservedFlow = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(f.flow.src.pod.as_deref(), Some("web-1"));
        assert_eq!(f.flow.dst.pod.as_deref(), Some("db-1"));
        let v = f.verdict.unwrap();
        assert!(!v.allowed);
        assert_eq!(v.ingress.policies, vec!["data/deny-all".to_owned()]);

        let (_, body) = call(router(s.clone()), "/api/v1/flows?verdict=allowed", None).await;
        assert_eq!(body, "");
        let (code, body) = call(router(s.clone()), "/api/v1/flows?verdict=maybe", None).await;
        assert_eq!(code, 400);
        assert!(body.contains("verdict=\"maybe\""), "{body}");
        let (code, _) = call(router(s.clone()), "/api/v1/flows?since=yesterday", None).await;
        assert_eq!(code, 400);

        let (code, body) = call(router(s.clone()), "/metrics", None).await;
        assert_eq!(code, 200);
        assert!(body.contains(
            r#"netpol_observe_flows_total{src_namespace="shop",src_kind="Pod",src_workload="web-1",dst_namespace="data",dst_kind="Pod",dst_workload="db-1",dst_port="5432",protocol="TCP",verdict="denied"} 1"#
        ), "{body}");
        assert!(body.contains(r#"netpol_observe_flow_packets_total{src_namespace="shop",src_kind="Pod",src_workload="web-1",dst_namespace="data",dst_kind="Pod",dst_workload="db-1",dst_port="5432",protocol="TCP"} 3"#), "{body}");
        let (_, om) = call(
            router(s.clone()),
            "/metrics",
            Some("application/openmetrics-text"),
        )
        .await;
        assert!(om.ends_with("# EOF\n"));

        let (code, body) = call(router(s.clone()), "/readyz", None).await;
        assert_eq!(code, 503);
        assert!(
            body.contains("datapath and drop tracepoint not attached"),
            "{body}"
        );
        let (code, _) = call(router(s), "/healthz", None).await;
        assert_eq!(code, 200);
        let _ = Body::empty();
    }

    fn policies(yaml: &str) -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
        use serde::Deserialize as _;
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| k8s_openapi::api::networking::v1::NetworkPolicy::deserialize(d).unwrap())
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

    #[tokio::test]
    async fn recommendations_cover_the_agents_flows() {
        let s = state();
        let (code, body) = call(router(s.clone()), "/api/v1/recommendations", None).await;
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
            router(s.clone()),
            "/api/v1/recommendations?namespace=data&default_deny=false",
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let data = policies(&body);
        assert_eq!(names(&data), ["data/db-1-np"]);
        assert_eq!(data[0], all[1]);

        let (code, body) = call(
            router(s.clone()),
            "/api/v1/recommendations?default_deny=maybe",
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("default_deny=\"maybe\""), "{body}");
        let (code, body) = call(router(s), "/api/v1/recommendations?nmespace=x", None).await;
        assert_eq!(code, 400);
        assert!(body.contains("nmespace"), "{body}");

        // No inventory yet: nothing can be attributed.
        let empty = Arc::new(AgentState::new(AgentConfig::default()));
        let (code, body) = call(router(empty), "/api/v1/recommendations", None).await;
        assert_eq!(code, 503);
        assert!(body.contains("no inventory loaded"), "{body}");
    }
}
