//! The agent process: the agent's loop ([`crate::agent`]) and its HTTP API ([`crate::http`])
//! under one cancellation token. The only module that knows both: the API reads the agent's
//! state, the agent knows nothing of the API.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig, AgentError, AgentState, KernelCapture, ObservedFlow};

/// Runs the agent until `stop` is cancelled: the HTTP API first (so `/healthz` answers at
/// once), then the agent on the kernel's capture. Either ending ends the other; the flows the
/// agent saw are returned.
pub async fn run(
    config: AgentConfig,
    stop: CancellationToken,
) -> Result<Vec<ObservedFlow>, AgentError> {
    config.validate()?;
    let state = Arc::new(AgentState::new(config.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let server = tokio::spawn(crate::http::serve(
        listener,
        Arc::clone(&state),
        stop.clone(),
    ));
    let result = Agent::run(state, KernelCapture::start, stop.clone()).await;
    stop.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("HTTP server: {e}"),
        Err(e) => tracing::warn!("HTTP server task: {e}"),
    }
    result
}
