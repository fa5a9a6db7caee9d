//! Who may use the console: signing in with `FLEET_CONSOLE_TOKEN`, the
//! session that follows, and the CSRF tokens every change carries.
//!
//! - **Sign-in.** The form posts the token; it is compared with the
//!   configured one by SHA-256 digest in constant time. Failed sign-ins are
//!   counted per client address (behind `FLEET_TRUSTED_PROXIES`, the
//!   forwarded one): after [`MAX_FAILED_SIGN_INS`] within
//!   [`SIGN_IN_WINDOW`] that address is refused (429) until the window ends.
//!   The form itself carries a one-time value that must match a cookie set
//!   with it (a double-submit token), so no other site can post it.
//! - **Sessions** live in Redis under the fleet's prefix,
//!   `<prefix>console:session:<SHA-256 of the cookie>`, for [`SESSION_TTL`]
//!   from sign-in (signing out deletes it at once). The cookie is random
//!   (244 bits from the OS generator), `HttpOnly`, `SameSite=Strict`,
//!   scoped to `/console`, and `Secure` when the request came through a
//!   proxy that says it was HTTPS. Redis holds only its digest, so a copy of
//!   Redis gives no usable cookie. A session remembers which token opened
//!   it (a 64-bit digest of it): changing `FLEET_CONSOLE_TOKEN` ends every
//!   session of the old one.
//! - **CSRF.** Each session has its own random token, put in every form that
//!   changes something and compared in constant time; a POST without it, or
//!   with another, is refused with 403 and changes nothing.
//!
//! Every sign-in, refusal and sign-out is logged with the session's
//! fingerprint (12 hex digits of its digest) and the client address, never
//! the token or the cookie.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::pages::{self, Layout};
use super::{ConsoleError, ConsoleState, Fields, BASE};
use crate::forwarded::client_address;

/// How long a session lasts from sign-in.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Failed sign-ins one client address may make per [`SIGN_IN_WINDOW`].
pub(crate) const MAX_FAILED_SIGN_INS: u64 = 10;
pub(crate) const SIGN_IN_WINDOW: Duration = Duration::from_secs(300);
/// How long a sign-in form may be used.
const SIGN_IN_FORM_TTL: Duration = Duration::from_secs(900);

const SESSION_COOKIE: &str = "fleet_console";
const SIGN_IN_COOKIE: &str = "fleet_console_sign_in";

/// A signed-in operator, as the pages see them.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// The SHA-256 (hex) of the cookie: names the session in Redis.
    digest: String,
    /// The token every changing form carries.
    pub(super) csrf: String,
}

impl Session {
    /// Names the session in logs without giving it away.
    pub(super) fn fingerprint(&self) -> &str {
        &self.digest[..12]
    }

    /// The fields of a state-changing form, once it carries this session's
    /// CSRF token; refused (403) otherwise. Every POST of a signed-in page
    /// reads its form through here.
    pub(super) fn form(&self, body: &Bytes) -> Result<Fields, ConsoleError> {
        let fields = Fields::of_body(body);
        let given = fields.get("csrf").unwrap_or_default();
        if bool::from(digest(given).ct_eq(&digest(&self.csrf))) {
            return Ok(fields);
        }
        tracing::warn!(session = self.fingerprint(), "console request refused: missing or wrong CSRF token");
        Err(ConsoleError::Forbidden(
            "this form does not carry the console's CSRF token; nothing was changed (reload the page and try again)"
                .into(),
        ))
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// 244 random bits from the OS generator, as 64 hex digits.
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the browser reached us over HTTPS through a proxy that says so.
/// Believing any client costs nothing: the claim only makes the cookie
/// stricter.
fn over_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|value| value.to_str().ok()).is_some_and(|proto| proto == "https")
}

fn set_cookie(response: &mut Response, name: &str, value: &str, path: &str, max_age: Duration, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{secure}", max_age.as_secs());
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

impl Session {
    /// The live session of the request's cookie, if any.
    async fn of(state: &ConsoleState, headers: &HeaderMap) -> Result<Option<Self>, ConsoleError> {
        let Some(value) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let digest = hex::encode(digest(value));
        let mut redis = state.redis()?;
        let (csrf, generation): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(state.keys.console_session(&digest))
            .arg("csrf")
            .arg("token_generation")
            .query_async(&mut redis)
            .await?;
        Ok(match (csrf, generation) {
            (Some(csrf), Some(generation)) if generation == state.token_generation => Some(Self { digest, csrf }),
            _ => None,
        })
    }
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = ConsoleError;

    /// The session of the request's cookie; a browser without one is sent
    /// to the sign-in form (a GET) or refused (anything else).
    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        match Self::of(state, &parts.headers).await? {
            Some(session) => Ok(session),
            None if parts.method == Method::GET || parts.method == Method::HEAD => Err(ConsoleError::SignIn),
            None => Err(ConsoleError::Forbidden("not signed in, or the session has ended; sign in again".into())),
        }
    }
}

/// `GET /console/sign-in`: the form, with a fresh one-time value in it and
/// in a cookie; a signed-in browser goes to the overview.
pub(super) async fn sign_in_form(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Ok(Some(_)) = Session::of(&state, &headers).await {
        return Redirect::to(BASE).into_response();
    }
    let nonce = random_token();
    let mut response = sign_in_page(StatusCode::OK, &nonce, None);
    let path = format!("{BASE}/sign-in");
    set_cookie(&mut response, SIGN_IN_COOKIE, &nonce, &path, SIGN_IN_FORM_TTL, over_https(&headers));
    response
}

fn sign_in_page(status: StatusCode, nonce: &str, problem: Option<&str>) -> Response {
    let body = html! {
        section.sign-in {
            h1 { "Sign in" }
            p.muted { "Sign in with the fleet's console token (" code { "FLEET_CONSOLE_TOKEN" } ")." }
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form method="post" action={ (BASE) "/sign-in" } {
                input type="hidden" name="csrf" value=(nonce);
                label for="token" { "Console token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, pages::page(Layout::SignedOut, "Sign in", body)).into_response()
}

/// `POST /console/sign-in`: the token for a session cookie.
pub(super) async fn sign_in(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let fields = Fields::of_body(&body);
    let client = client_address(peer.ip(), &headers, &state.trusted_proxies);
    let nonce = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    let echoed = fields.get("csrf").unwrap_or_default();
    if nonce.is_empty() || !bool::from(digest(nonce).ct_eq(&digest(echoed))) {
        tracing::warn!(%client, "console sign-in refused: the form was not the console's (no matching CSRF value)");
        return Err(ConsoleError::Forbidden(
            "this sign-in form is not the console's, or it has expired; open the sign-in page again".into(),
        ));
    }
    let mut redis = state.redis()?;
    let failures_key = state.keys.console_sign_in_failures(client);
    // Every attempt takes its place in the count first, atomically, and a
    // right one gives it back: however many arrive at once, at most
    // MAX_FAILED_SIGN_INS wrong tokens are ever compared per window.
    let (attempts,): (u64,) = redis::pipe()
        .incr(&failures_key, 1)
        .cmd("EXPIRE")
        .arg(&failures_key)
        .arg(SIGN_IN_WINDOW.as_secs())
        .arg("NX")
        .ignore()
        .query_async(&mut redis)
        .await?;
    if attempts > MAX_FAILED_SIGN_INS {
        tracing::warn!(%client, "console sign-in refused: too many failed sign-ins from this address");
        let mut response = sign_in_page(
            StatusCode::TOO_MANY_REQUESTS,
            nonce,
            Some("Too many failed sign-ins from this address; try again in a few minutes."),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(SIGN_IN_WINDOW.as_secs()));
        return Ok(response);
    }
    let given = fields.get("token").unwrap_or_default();
    if !bool::from(digest(given).ct_eq(&state.token_digest)) {
        tracing::warn!(%client, "console sign-in refused: wrong token");
        return Ok(sign_in_page(StatusCode::UNAUTHORIZED, nonce, Some("That is not the console token.")));
    }
    let _: () = redis.decr(&failures_key, 1).await?;
    let cookie_value = random_token();
    let session = Session { digest: hex::encode(digest(&cookie_value)), csrf: random_token() };
    let key = state.keys.console_session(&session.digest);
    let _: () = redis::pipe()
        .hset_multiple(
            &key,
            &[
                ("csrf", session.csrf.as_str()),
                ("token_generation", &state.token_generation),
                ("started_at", &Utc::now().to_rfc3339()),
            ],
        )
        .ignore()
        .pexpire(&key, SESSION_TTL.as_millis() as i64)
        .ignore()
        .query_async(&mut redis)
        .await?;
    tracing::info!(session = session.fingerprint(), %client, "console sign-in");
    let mut response = Redirect::to(BASE).into_response();
    let secure = over_https(&headers);
    set_cookie(&mut response, SESSION_COOKIE, &cookie_value, BASE, SESSION_TTL, secure);
    set_cookie(&mut response, SIGN_IN_COOKIE, "", &format!("{BASE}/sign-in"), Duration::ZERO, secure);
    Ok(response)
}

/// `POST /console/sign-out`: ends the session at once.
pub(super) async fn sign_out(
    State(state): State<ConsoleState>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    session.form(&body)?;
    let mut redis = state.redis()?;
    let _: () = redis.del(state.keys.console_session(&session.digest)).await?;
    tracing::info!(session = session.fingerprint(), "console sign-out");
    let mut response = Redirect::to(&format!("{BASE}/sign-in")).into_response();
    set_cookie(&mut response, SESSION_COOKIE, "", BASE, Duration::ZERO, over_https(&headers));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("fleet_console_sign_in=a; fleet_console=b"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("b"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), Some("a"));
        assert_eq!(cookie(&headers, "fleet"), None);
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
