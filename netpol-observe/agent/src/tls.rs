//! The process's one TLS stack: rustls with the `ring` crypto provider.
//!
//! kube (the API server client) and reqwest (`recommend --agent/--prometheus`, `flows --agent`)
//! both use rustls. rustls picks a process-wide crypto provider from its crate features only
//! when exactly one is compiled in; two (e.g. `ring` from kube and `aws-lc-rs` from reqwest's
//! default) make every TLS client panic at its first handshake set-up. The workspace builds rustls
//! with `ring` only (reqwest's `rustls-no-provider`), and [`install_crypto_provider`] installs it
//! explicitly at start, so a future dependency that brings a second provider cannot bring that
//! panic back (a test builds kube clients, `inventory::kubeapi`).

/// Installs rustls' `ring` provider as the process default (idempotent: a provider already
/// installed, ours or another, is kept).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first: that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    /// One provider in the build: a second (aws-lc-rs, the default of reqwest's and rustls'
    /// own features) would make the choice depend on install order again.
    #[test]
    fn the_build_has_one_crypto_provider() {
        let lock = include_str!("../../../Cargo.lock");
        assert!(
            lock.contains("name = \"ring\""),
            "ring is the chosen provider"
        );
        assert!(
            !lock.contains("name = \"aws-lc-rs\""),
            "a dependency brings aws-lc-rs as a second rustls provider: turn its TLS feature to \
             a provider-less one"
        );
    }
}
