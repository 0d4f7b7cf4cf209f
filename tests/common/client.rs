//! Speaking HTTP to binderd: a client, its answers, and the waits and
//! checks every test uses.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ADMIN;

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Http::send`] for a server that may go away mid-request (a SIGKILL
    /// test): the failure instead of a panic.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| "request timed out".to_owned())?
            .map_err(|e| format!("request failed: {e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body failed: {e:?}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// A request without a body, with an API key or none.
    pub async fn call(&self, method: Method, url: &str, key: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> =
            key.map(|k| vec![("authorization", k)]).unwrap_or_default();
        self.send(method, url, &headers, Bytes::new()).await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, url: &str, key: Option<&str>, body: &Value) -> Answer {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = key {
            headers.push(("authorization", k));
        }
        self.send(Method::POST, url, &headers, body.to_string())
            .await
    }
}

/// Polls `GET /pools/{name}` until `check` holds (or fails after `secs`).
pub async fn wait_pool(
    http: &Http,
    base: &str,
    name: &str,
    secs: u64,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let a = http.get(&format!("{base}/pools/{name}")).await;
        if a.status == 200 && check(&a.json()) {
            return a.json();
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "pool {name} never reached the expected state: {} {}",
                a.status, a.body
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a SPEC error body with this code.
pub fn assert_error(a: &Answer, code: u16) {
    assert_eq!(a.status, code, "{}", a.body);
    let v = a.json();
    assert_eq!(v["error"]["code"], code, "{}", a.body);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
}

/// `POST {base}/bindings` as the admin; asserts 201.
pub async fn create_binding(http: &Http, base: &str, body: &Value) -> Answer {
    let a = http
        .post_json(&format!("{base}/bindings"), Some(ADMIN), body)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a
}

/// Polls `check` until it holds, failing after `secs` with `what`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it gives a value, failing after `secs` with `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST {base}/binders/{binding}` as `key`: asserts a warm handout (201)
/// and returns the binder's id and location.
pub async fn hand_out(
    http: &Http,
    base: &str,
    binding: &str,
    key: Option<&str>,
) -> (String, String) {
    let a = http
        .call(Method::POST, &format!("{base}/binders/{binding}"), key)
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let doc = a.json();
    let field = |k: &str| {
        doc[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k}: {doc}"))
            .to_owned()
    };
    (field("id"), field("location"))
}

/// Creates `binding` at `base` (as the admin) and waits until `pool.min`
/// binders of it are available.
pub async fn create_and_fill(http: &Http, base: &str, binding: &Value) {
    create_binding(http, base, binding).await;
    let name = binding["name"].as_str().expect("the binding has a name");
    let min = binding["pool"]["min"]
        .as_u64()
        .expect("the binding has pool.min");
    wait_pool(http, base, name, 60, |p| p["available"] == min).await;
}
