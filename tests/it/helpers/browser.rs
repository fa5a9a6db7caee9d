//! A real browser for the console's tests: Debian's headless Chromium,
//! driven through its chromedriver (WebDriver) with fantoccini.
//!
//! Each [`Browser`] starts its own chromedriver on a free port, in a
//! process group of its own with a profile directory of its own, and kills
//! that group (chromedriver and the Chromium it started) when dropped, so a
//! failed test leaves no browser behind. Every wait is explicit: for an
//! element ([`Browser::wait_for`]) or for a page to show something after
//! reloads ([`Browser::reload_until`]), with generous timeouts, since the
//! test machine may be busy.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// How long any wait for the browser lasts before the test fails.
pub const BROWSER_WAIT: Duration = Duration::from_secs(60);

/// A headless Chromium driven through chromedriver (found by
/// `super::tools`, which names the packages when missing).
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of 1280×900.
    pub async fn start() -> Self {
        let (chromedriver, chromium) = (super::tools::CHROMEDRIVER.path(), super::tools::CHROMIUM.path());
        let port = fleet::local_services::free_port().expect("a free port");
        let profile = super::servers::scratch_dir("chromium");
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let mut driver = tokio::process::Command::new(&chromedriver);
        driver
            .arg(format!("--port={port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own group: dropping the browser kills chromedriver and Chromium together.
            .process_group(0)
            .kill_on_drop(true);
        let driver = driver.spawn().expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = fleet::http_client::builder().build().expect("an HTTP client");
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        while status.get(format!("{url}/status")).send().await.map(|answer| answer.status().is_success()).ok()
            != Some(true)
        {
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("an object"),
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a Chromium session through chromedriver");
        Self { client, driver, profile }
    }

    /// The element `css` selects, waiting for it to appear.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(BROWSER_WAIT)
            .every(Duration::from_millis(100))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no `{css}` within {BROWSER_WAIT:?}: {err}"))
    }

    /// The text of the element `css` selects, once it appears.
    pub async fn text_of(&self, css: &str) -> String {
        self.wait_for(css).await.text().await.expect("its text")
    }

    /// Opens `url` again and again until `check` holds for the page's HTML.
    pub async fn reload_until(&self, url: &str, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            self.client.goto(url).await.expect("the page opens");
            let html = self.client.source().await.expect("the page's source");
            if check(&html) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}; last page:\n{html}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client.current_url().await.expect("the current URL").path().to_owned()
    }

    /// Waits until the browser shows the page at `path`.
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        while self.path().await != path {
            assert!(tokio::time::Instant::now() < deadline, "the browser never reached {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window, written to `$FLEET_CONSOLE_SCREENSHOTS/<name>`
    /// when that is set (how `docs/console-*.png` are made), else beside the
    /// browser's profile (removed with it); returns where.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = std::env::var_os("FLEET_CONSOLE_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.profile.join("screenshots"));
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the browser session, then chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(BROWSER_WAIT, self.client.clone().close()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            // The group chromedriver leads: itself and the Chromium it started.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
