//! The operator console as plain HTTP sees it: a client that keeps its
//! cookies and follows no redirect, so a test sees every answer, and the
//! console's settings for a test.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};

use super::roles::api_tuning;

/// The console token of the tests' consoles.
pub const CONSOLE_TOKEN: &str = "console-token-for-tests-0123456789";

/// Read API settings that serve the console with [`CONSOLE_TOKEN`].
pub fn console_tuning() -> fleet::api::Settings {
    fleet::api::Settings { console_token: Some(CONSOLE_TOKEN.parse().expect("a console token")), ..api_tuning() }
}

/// A browser without a browser: keeps the cookies it is given, sends them
/// back, and answers each request as it came (no redirect followed).
pub struct ConsoleClient {
    base: String,
    http: reqwest::Client,
    cookies: Mutex<BTreeMap<String, String>>,
}

impl ConsoleClient {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        let http = fleet::http_client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        Self { base: base.trim_end_matches('/').to_owned(), http, cookies: Mutex::default() }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().expect("cookies").get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies.lock().expect("cookies").insert(name.to_owned(), value.to_owned());
    }

    fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().expect("cookies");
        cookies.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("; ")
    }

    fn keep_cookies(&self, response: &reqwest::Response) {
        let mut cookies = self.cookies.lock().expect("cookies");
        for header in response.headers().get_all(SET_COOKIE) {
            let Some((pair, attributes)) = header.to_str().ok().map(|text| text.split_once(';').unwrap_or((text, "")))
            else {
                continue;
            };
            let Some((name, value)) = pair.split_once('=') else { continue };
            if attributes.contains("Max-Age=0") {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .expect("the console answers");
        self.keep_cookies(&response);
        response
    }

    pub async fn get_text(&self, path: &str) -> (reqwest::StatusCode, String) {
        let response = self.get(path).await;
        (response.status(), response.text().await.expect("a body"))
    }

    /// POSTs `fields` as a form.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("the console answers");
        self.keep_cookies(&response);
        response
    }

    /// Opens the sign-in form and posts `token` with the form's own value.
    pub async fn sign_in(&self, token: &str) -> reqwest::Response {
        let (status, form) = self.get_text("/console/sign-in").await;
        assert_eq!(status, 200, "{form}");
        let nonce = csrf_of(&form).expect("the sign-in form carries its value");
        self.post("/console/sign-in", &[("csrf", &nonce), ("token", token)]).await
    }

    /// Signs in with [`CONSOLE_TOKEN`] and answers the session's CSRF token.
    pub async fn signed_in(&self) -> String {
        let answer = self.sign_in(CONSOLE_TOKEN).await;
        assert_eq!(answer.status(), 303, "sign-in with the right token");
        let (status, page) = self.get_text("/console").await;
        assert_eq!(status, 200, "{page}");
        csrf_of(&page).expect("a signed-in page carries the CSRF token")
    }
}

/// The value of the first `csrf` field in a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let start = html.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}
