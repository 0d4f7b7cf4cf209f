//! The CLI's HTTP client: one binderd's API, the key it sends, and the exit
//! code each kind of answer means.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::Target;

/// Why a command failed: its message and exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub message: String,
    pub code: u8,
}

impl AdminError {
    pub(super) fn new(code: u8, message: impl Into<String>) -> AdminError {
        AdminError {
            message: message.into(),
            code,
        }
    }

    /// The exit code an HTTP answer's status means.
    pub(super) fn from_answer(status: u16, body: &Value) -> AdminError {
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = match status {
            401 | 403 => 3,
            404 => 4,
            409 | 429 | 503 => 5,
            _ => 1,
        };
        AdminError::new(code, message)
    }
}

pub(super) struct Api {
    pub(super) base: String,
    key: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub(super) fn new(target: &Target) -> Result<Api, AdminError> {
        let key = match &target.key_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        AdminError::new(1, format!("cannot read {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("BINDERD_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        };
        Ok(Api {
            base: target.url.trim_end_matches('/').to_owned(),
            key,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub(super) async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes), AdminError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(key) = &self.key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AdminError::new(2, format!("bad URL {url}: {e}")))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| AdminError::new(1, format!("no answer from {} in 30s", self.base)))?
            .map_err(|e| {
                AdminError::new(1, format!("cannot reach binderd at {}: {e}", self.base))
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| AdminError::new(1, format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A JSON call; an error answer becomes its exit code.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        Ok(self.call_status(method, path, body).await?.1)
    }

    /// [`Api::call`], with the success status (201 created, 200 replaced).
    pub(super) async fn call_status(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), AdminError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(AdminError::from_answer(status, &doc));
        }
        Ok((status, doc))
    }

    /// The binding a binder id belongs to (ids are unique across bindings).
    pub(super) async fn binding_of(&self, id: &str) -> Result<String, AdminError> {
        for binding in self
            .call(Method::GET, "/bindings", None)
            .await?
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = binding["name"].as_str().unwrap_or_default();
            let Ok(binders) = self
                .call(Method::GET, &format!("/binders/{name}"), None)
                .await
            else {
                continue;
            };
            if binders
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["id"] == id)
            {
                return Ok(name.to_owned());
            }
        }
        Err(AdminError::new(
            4,
            format!("no binder '{id}' that this key may see"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_exit_codes() {
        let e = AdminError::from_answer(403, &serde_json::json!({"error": {"message": "no"}}));
        assert_eq!((e.code, e.message.as_str()), (3, "no"));
        assert_eq!(AdminError::from_answer(404, &Value::Null).code, 4);
        assert_eq!(AdminError::from_answer(503, &Value::Null).code, 5);
        assert_eq!(AdminError::from_answer(500, &Value::Null).code, 1);
    }
}
