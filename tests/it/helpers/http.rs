//! What a test sends: the Thinkific example bodies, edited to order, and
//! signed POSTs to an intake.

use std::path::PathBuf;
use std::time::Duration;

use super::roles::IntakeServer;

/// The signing key of the intake `TestContext::spawn_intake` starts.
pub const SECRET: &str = "test-webhook-secret";

/// A Thinkific example body from `tests/fixtures/thinkific`.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thinkific").join(format!("{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).trim_end().to_owned()
}

/// An example body with fields of its envelope or payload replaced.
pub fn event(name: &str, envelope: serde_json::Value, payload: serde_json::Value) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&fixture(name)).expect("fixture is JSON");
    merge(&mut body, envelope);
    merge(&mut body["payload"], payload);
    body.to_string()
}

fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    if let (Some(target), serde_json::Value::Object(patch)) = (target.as_object_mut(), patch) {
        for (key, value) in patch {
            target.insert(key, value);
        }
    }
}

/// POSTs `body` signed with `key` to the intake.
pub async fn post_signed(intake: &IntakeServer, body: &str, key: &str) -> reqwest::Response {
    post_signed_url(&intake.url("/webhooks/thinkific"), body, key).await
}

/// POSTs `body` signed with `key` to `url` (an intake's webhook path).
pub async fn post_signed_url(url: &str, body: &str, key: &str) -> reqwest::Response {
    fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(url)
        .header("content-type", "application/json")
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(key.as_bytes(), body.as_bytes()))
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request completes")
}

/// `GET url` with a client of the fleet's own TLS set-up (reqwest's
/// `reqwest::get` would start one without a crypto provider).
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    fleet::http_client::builder().build()?.get(url).send().await
}
