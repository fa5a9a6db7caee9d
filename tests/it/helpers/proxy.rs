//! A TCP proxy in front of a server, to stage its outage.

use std::time::Duration;

use tokio::task::JoinHandle;

/// A TCP proxy that a test can cut (drop every connection and refuse new
/// ones) and restore, to stage a network or server outage.
pub struct Proxy {
    pub port: u16,
    target: String,
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Proxies 127.0.0.1:<new port> to the host and port of `url`.
    pub async fn start(url: &str) -> Self {
        let url = url::Url::parse(url).expect("a URL");
        let target = format!("{}:{}", url.host_str().expect("host"), url.port().expect("port"));
        let port = fleet::local_services::free_port().expect("port");
        let proxy = Self { port, target, accept: std::sync::Mutex::new(None), connections: std::sync::Arc::default() };
        proxy.restore().await;
        proxy
    }

    /// `url` with its port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a URL");
        url.set_port(Some(self.port)).expect("port");
        url.to_string()
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(accept) = self.accept.lock().expect("lock").take() {
            accept.abort();
        }
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    /// Accepts connections again.
    pub async fn restore(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let target = self.target.clone();
        let connections = self.connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().expect("lock").push(task.abort_handle());
            }
        });
        *self.accept.lock().expect("lock") = Some(accept);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
