//! The HTTP client towards containers, shared by the pool's readiness probe
//! and the proxy, so a connection the probe opened serves the first proxied
//! request.

use std::net::SocketAddr;
use std::time::Duration;

use http::header;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::body::{empty, Body};

/// How long one readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Upstream {
    client: Client<HttpConnector, Body>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Upstream { client }
    }

    /// Sends one request to a container.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }

    /// True if something at `addr` answers `GET path` with any HTTP response.
    pub async fn answers(&self, addr: SocketAddr, path: &str) -> bool {
        let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
            return false;
        };
        let Ok(req) = Request::get(uri)
            .header(header::USER_AGENT, "binderd-readiness")
            .body(empty())
        else {
            return false;
        };
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                // Drain so the connection can be reused by the proxy.
                let _ = tokio::time::timeout(PROBE_TIMEOUT, resp.into_body().collect()).await;
                true
            }
            _ => false,
        }
    }
}
