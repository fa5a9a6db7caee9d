//! The one way Fleet builds an HTTP client (the revalidation hook, `fleet
//! loadtest`'s metric reads): reqwest over rustls with ring, the crypto
//! provider every TLS client of the fleet uses (no aws-lc C build).
//!
//! reqwest's `rustls-no-provider` asks the process to install a provider
//! before a client is built; [`client`] does, once.

use std::sync::Once;
use std::time::Duration;

/// Installs ring as the process's rustls provider, unless one is already.
pub(crate) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: a provider was installed first (the same ring), which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder on that provider: the only way to start one (tests too).
#[allow(clippy::disallowed_methods)] // The one place that may.
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A client whose requests give up after `timeout` and follow no
/// redirect: a URL an operator gave is the only place it goes.
pub fn client(timeout: Duration) -> reqwest::Client {
    builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build().unwrap_or_else(|err| {
        // Only a TLS back end that cannot start fails a build, and then
        // every client would: say so, and serve without the hook's timeout.
        tracing::error!(error = %err, "the HTTP client cannot be built with its timeout; using one without");
        reqwest::Client::default()
    })
}
