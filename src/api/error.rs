//! The one place errors become HTTP answers.
//!
//! Every error binderd answers with is an [`ApiError`]; `From` impls map the
//! other modules' errors onto it, and [`ApiError::into_response`] renders
//! `{"error": {"code": N, "message": "..."}}` with the fitting status and
//! headers. Internal errors log their cause and answer a generic 500.

use crate::content::ContentError;
use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::auth::AuthError;
use crate::backend::BackendError;
use crate::binding::InvalidBinding;
use crate::body::{full, Body};
use crate::pool::{PoolError, Refused};
use crate::proxy::ProxyError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed here")]
    MethodNotAllowed { method: Method, allow: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// `tmpnb` marks tmpnb's `{"status": "full"}` answer.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: u64,
        tmpnb: bool,
    },
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// The cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Renders the error; `html` gives browsers a short page instead of JSON.
    pub fn into_response(self, html: bool) -> Response<Body> {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let message = self.to_string();
        let (content_type, body) = if html {
            let text = escape_html(&message);
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><title>{code} {reason}</title><h1>{code} {reason}</h1><p>{text}</p>\n",
                    code = status.as_u16(),
                    reason = status.canonical_reason().unwrap_or(""),
                ),
            )
        } else {
            let doc = super::views::ErrorBody {
                error: super::views::ErrorDetail {
                    code: status.as_u16(),
                    message,
                },
                status: matches!(self, ApiError::TooManyRequests { tmpnb: true, .. })
                    .then(|| "full".to_owned()),
            };
            (
                "application/json",
                serde_json::to_string(&doc).unwrap_or_default(),
            )
        };
        let mut resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(full(body))
            .unwrap_or_else(|_| Response::new(full(String::new())));
        let headers = resp.headers_mut();
        super::reply::guard(headers);
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooManyRequests { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidKey | AuthError::Required => ApiError::Unauthorized(e.to_string()),
            AuthError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

impl From<InvalidBinding> for ApiError {
    fn from(e: InvalidBinding) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::NotFound(_) => ApiError::NotFound(e.to_string()),
            PoolError::Exists(_) | PoolError::InUse { .. } | PoolError::NotReady(_) => {
                ApiError::Conflict(e.to_string())
            }
            PoolError::Full { .. } => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: 5,
            },
            PoolError::Invalid(e) => e.into(),
            PoolError::Quota(q) if q.anonymous => ApiError::TooManyRequests {
                message: q.what,
                retry_after: 60,
                tmpnb: false,
            },
            PoolError::Quota(q) => ApiError::Forbidden(q.to_string()),
            // What could not be recorded was not done (a handout is not
            // given unrecorded): a full disk, or a writer gone, is a
            // refusal to try again, not binderd's fault.
            PoolError::Store(
                e @ (crate::store::StoreError::Write(_)
                | crate::store::StoreError::Io(_)
                | crate::store::StoreError::Closed),
            ) => {
                // The cause stays in the log (it may name binderd's paths).
                tracing::warn!(cause = %e, "refused: cannot record");
                ApiError::Unavailable {
                    message: "binderd cannot record this now (its data dir's disk is full or failing), so it did nothing: try again".into(),
                    retry_after: 5,
                }
            }
            PoolError::Store(e) => ApiError::Internal(e.to_string()),
            PoolError::Backend(BackendError::Unsupported(m)) => ApiError::Conflict(m),
            PoolError::Backend(e) => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: 5,
            },
            // The binding's repository: what it holds, or whether it
            // answers, is the caller's to fix; a missing tool is ours.
            PoolError::Content(ContentError::Invalid(m) | ContentError::Repo(m)) => {
                ApiError::BadRequest(m)
            }
            PoolError::Content(e @ ContentError::Tool(_)) => ApiError::Internal(e.to_string()),
            PoolError::Refused(r @ (Refused::NoProfiles { .. } | Refused::Unknown { .. })) => {
                ApiError::BadRequest(r.to_string())
            }
            PoolError::Refused(r @ Refused::KeysOnly { .. }) => ApiError::Forbidden(r.to_string()),
            PoolError::Refused(r @ Refused::Replacing { .. }) => ApiError::Unavailable {
                message: r.to_string(),
                retry_after: 1,
            },
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Unreachable(_) => ApiError::BadGateway(e.to_string()),
            ProxyError::Timeout => ApiError::GatewayTimeout(e.to_string()),
            ProxyError::BadRequest(m) => ApiError::BadRequest(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    async fn body_of(resp: Response<Body>) -> String {
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn errors_render_as_spec_json_with_headers() {
        let resp = ApiError::NotFound("binding 'x' not found".into()).into_response(false);
        assert_eq!(resp.status(), 404);
        let v: serde_json::Value = serde_json::from_str(&body_of(resp).await).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": 404, "message": "binding 'x' not found"}})
        );

        let resp = ApiError::TooManyRequests {
            message: "full".into(),
            retry_after: 3,
            tmpnb: true,
        }
        .into_response(false);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let v: serde_json::Value = serde_json::from_str(&body_of(resp).await).unwrap();
        assert_eq!(v["status"], "full");

        let resp = ApiError::MethodNotAllowed {
            method: Method::PATCH,
            allow: "GET, POST",
        }
        .into_response(false);
        assert_eq!(resp.headers()[header::ALLOW], "GET, POST");
    }

    /// A full disk refuses what it cannot record with a 503 to retry (the
    /// fault run found them as 500s), its cause kept from the answer.
    #[tokio::test]
    async fn what_cannot_be_recorded_is_a_503_to_retry() {
        use crate::store::StoreError;
        for e in [
            StoreError::Write("commit failed: database or disk is full at /data/x".into()),
            StoreError::Io(std::io::Error::other("No space left on device")),
            StoreError::Closed,
        ] {
            let resp = ApiError::from(PoolError::Store(e)).into_response(false);
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
            let body = body_of(resp).await;
            assert!(
                body.contains("cannot record") && !body.contains("/data"),
                "{body}"
            );
        }
        let corrupt = ApiError::from(PoolError::Store(StoreError::Corrupt("x".into())));
        assert_eq!(corrupt.into_response(false).status(), 500);
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let resp = ApiError::Internal("disk full at /secret/path".into()).into_response(false);
        assert_eq!(resp.status(), 500);
        assert!(!body_of(resp).await.contains("secret"));
    }

    #[tokio::test]
    async fn html_is_escaped() {
        let resp = ApiError::NotFound("<script>".into()).into_response(true);
        let body = body_of(resp).await;
        assert!(body.contains("&lt;script&gt;") && !body.contains("<script>"));
    }
}
