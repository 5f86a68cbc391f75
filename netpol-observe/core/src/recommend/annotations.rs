//! The evidence annotations written on every recommended policy.

use std::collections::BTreeMap;

use super::{
    RecommendConfig,
    observe::{Span, WorkloadObs},
};

/// Number of observed flows backing the policy.
pub const FLOWS: &str = "netpol-observe.io/flows";
/// First time a backing flow was seen (RFC 3339).
pub const FIRST_SEEN: &str = "netpol-observe.io/first-seen";
/// Last time a backing flow was seen (RFC 3339).
pub const LAST_SEEN: &str = "netpol-observe.io/last-seen";
/// The observation window, `<start>/<end>` (RFC 3339 interval).
pub const WINDOW: &str = "netpol-observe.io/observation-window";
/// The workload the policy is for, `<Kind>/<name>`.
pub const WORKLOAD: &str = "netpol-observe.io/workload";
/// Why the policy may be incomplete (a workload seen too briefly).
pub const WARNING: &str = "netpol-observe.io/warning";
/// Which rules are wider than the observed addresses, and why.
pub const AGGREGATION: &str = "netpol-observe.io/aggregation";
/// Platform traffic kept automatically: the API server and other Services without selector
/// (their endpoint addresses and ports), node-local DNS, cloud metadata endpoints.
pub const PLATFORM: &str = "netpol-observe.io/platform";
/// On `default-deny`: the namespace's workloads (`Kind/name`, from the inventory) with no
/// observed flow, which the policy isolates completely.
pub const UNOBSERVED: &str = "netpol-observe.io/unobserved-workloads";
/// On `default-deny`: observed flows no rule could be written for and that the recommended
/// policies deny, with the reason.
pub const LEFT_OUT: &str = "netpol-observe.io/left-out";
/// On `default-deny`: flows the policies in force denied that never got through, with an end
/// in the namespace: no rule allows them (review; `--include-denied` learns them).
pub const DENIED_IN_FORCE: &str = "netpol-observe.io/denied-in-force";

/// The window annotation value, if the flows had timestamps.
pub(crate) fn window(span: &Span) -> Option<String> {
    Some(format!("{}/{}", span.first?, span.last?))
}

/// Flows, first/last seen and window.
pub(crate) fn evidence(span: &Span, window: &Option<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(FLOWS.to_owned(), span.flows.to_string());
    if let Some(t) = span.first {
        out.insert(FIRST_SEEN.to_owned(), t.to_string());
    }
    if let Some(t) = span.last {
        out.insert(LAST_SEEN.to_owned(), t.to_string());
    }
    if let Some(w) = window {
        out.insert(WINDOW.to_owned(), w.clone());
    }
    out
}

/// A warning for a workload seen too briefly: a Job/CronJob seen in a single run, or a
/// workload whose flows span less than `min_observation` and less than half the window.
pub(crate) fn brief_warning(
    w: &WorkloadObs<'_>,
    window: &Span,
    config: &RecommendConfig,
) -> Option<String> {
    if matches!(w.kind, "CronJob" | "Job") && w.pods.len() == 1 {
        return Some(format!(
            "{} seen in a single run in the window; other runs may need traffic not observed here",
            w.kind
        ));
    }
    let seen = w.span.seconds()?;
    let total = window.seconds()?;
    let min = config.min_observation.as_secs();
    if seen < min && seen.saturating_mul(2) < total {
        return Some(format!(
            "{}/{} seen for {seen}s of a {total}s window (less than {min}s): traffic may be missing",
            w.kind, w.name
        ));
    }
    None
}

/// A warning for a whole observation window shorter than `min_observation`.
pub(crate) fn window_warning(window: &Span, config: &RecommendConfig) -> Option<String> {
    let total = window.seconds()?;
    let min = config.min_observation.as_secs();
    (total < min).then(|| {
        format!(
            "the observation window is {total}s, shorter than {min}s: periodic traffic (batch jobs, backups, failover, rare clients) is probably missing"
        )
    })
}
