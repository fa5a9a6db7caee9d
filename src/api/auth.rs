//! Who may read what: the read API's bearer tokens and their scopes.
//!
//! `FLEET_API_TOKEN` reads every school, each token of `FLEET_API_TOKENS`
//! only the schools it is paired with (403 for another). Tokens are kept
//! only as SHA-256 digests and compared in constant time, so neither a
//! memory dump nor response timing gives them away. Without any token the
//! API is open: only `fleet dev` runs so, `fleet api` refuses to.
//! [`authorize`] runs first on every route (401 without a valid token) and
//! leaves a [`Caller`] for the rate limit and the routes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use fleet_jobs::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{error, ApiState, Settings};

/// The schools one token may read.
enum Scope {
    Every,
    Only(BTreeSet<TenantId>),
}

/// A configured token, known only by its SHA-256 digest.
struct Credential {
    digest: [u8; 32],
    /// The first 16 hex digits of the digest: names the token in Redis keys.
    fingerprint: String,
    scope: Scope,
}

/// Every configured token; none means an open API (`fleet dev` only).
pub(super) struct Access {
    credentials: Vec<Arc<Credential>>,
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl Access {
    /// `FLEET_API_TOKEN` reads every school; a token of `FLEET_API_TOKENS`
    /// reads the schools it is paired with (every school if it is also
    /// `FLEET_API_TOKEN`).
    pub(super) fn new(tuning: &Settings) -> Self {
        let mut scopes: BTreeMap<[u8; 32], Scope> = BTreeMap::new();
        for (school, token) in tuning.api_tokens.iter().flat_map(|tokens| tokens.pairs()) {
            if let Scope::Only(schools) = scopes.entry(sha256(token.expose())).or_insert(Scope::Only(BTreeSet::new())) {
                schools.insert(school.clone());
            }
        }
        if let Some(token) = &tuning.api_token {
            scopes.insert(sha256(token.expose()), Scope::Every);
        }
        let credentials = scopes
            .into_iter()
            .map(|(digest, scope)| Arc::new(Credential { digest, fingerprint: hex::encode(&digest[..8]), scope }))
            .collect();
        Self { credentials }
    }

    /// The credential of `token`, comparing digests in constant time.
    fn authenticate(&self, token: &str) -> Option<Arc<Credential>> {
        let given = sha256(token);
        self.credentials.iter().find(|credential| bool::from(credential.digest.ct_eq(&given))).cloned()
    }
}

/// Who is asking, as `authorize` found out; read by the rate limit and the routes.
#[derive(Clone)]
pub(super) struct Caller {
    /// None when the API runs without tokens.
    credential: Option<Arc<Credential>>,
}

impl Caller {
    pub(super) fn may_read(&self, school: &TenantId) -> bool {
        match self.credential.as_deref().map(|credential| &credential.scope) {
            None | Some(Scope::Every) => true,
            Some(Scope::Only(schools)) => schools.contains(school),
        }
    }

    pub(super) fn token_fingerprint(&self) -> Option<&str> {
        self.credential.as_deref().map(|credential| credential.fingerprint.as_str())
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's
/// case does not matter (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

pub(super) async fn authorize(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let caller = if state.access.credentials.is_empty() {
        Caller { credential: None }
    } else {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or_default();
        match state.access.authenticate(given) {
            Some(credential) => Caller { credential: Some(credential) },
            None => {
                let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
