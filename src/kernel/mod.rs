//! Jupyter kernels, spoken to by binderd itself: warm kernels for pooled
//! binders (start one through the server's REST API, run the binding's
//! warm-up code in it over the kernel's WebSocket channels), the server's own
//! activity for culling. (Which client request is given a pooled binder's
//! warm kernel is the routes' rule: `api::warm_kernel`.)
//!
//! The REST calls go through [`Upstream`] (the connection the readiness
//! probe opened is reused); the channels are one WebSocket per warm-up, in
//! the Jupyter messaging protocol's JSON form (the one every client speaks
//! without a subprotocol). Calls that only look (`api/kernelspecs`,
//! `api/kernels`) pass `no_track_activity`, so binderd's own looking never
//! counts as the reader's activity.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::binder::{random_secret, WarmKernel};
use crate::binding::Kernel;
use crate::body::{empty, full};
use crate::upstream::held::{self, Held};
use crate::upstream::Upstream;

mod channels;
pub use channels::{execute_request, Channels};

/// What a kernel without warm-up code runs before the handout: a cell
/// that calls `print` (writing nothing), so the kernel's first cell (its
/// compiler and run path, `print`) has run once and the reader's first cell
/// does not pay for it (7.8 → 5.6 ms here, BENCHMARKS.md).
const FIRST_CELL: &str = "print(end='')";

/// Largest server answer read (kernel models and lists are a few KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the server has no Jupyter API (GET {path} answered {status})")]
    NoJupyter { path: String, status: String },
    #[error("the server has no kernel named '{name}' (it has: {known})")]
    NoSuchKernel { name: String, known: String },
    #[error("cannot start kernel '{name}': the server answered {status}: {message}")]
    Start {
        name: String,
        status: u16,
        message: String,
    },
    #[error("kernel '{name}' warm-up raised {ename}: {evalue}")]
    Raised {
        name: String,
        ename: String,
        evalue: String,
    },
    #[error("the kernel's channels closed before it was idle again")]
    Closed,
    #[error("talking to the server: {0}")]
    Http(String),
    #[error("kernel WebSocket: {0}")]
    WebSocket(String),
    #[error("kernel '{name}' was not warm within the start timeout")]
    Timeout { name: String },
}

/// The server at `addr`, with its API under `base` (`/user/{token}/`, or `/`
/// when the binding strips the prefix).
#[derive(Clone, Copy)]
pub struct Server<'a> {
    pub upstream: &'a Upstream,
    pub addr: SocketAddr,
    pub base: &'a str,
}

impl Server<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), KernelError> {
        let uri = format!("http://{}{}{}", self.addr, self.base, path);
        let builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::USER_AGENT, "binderd-kernels");
        let req = match body {
            Some(v) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(v.to_string())),
            None => builder.body(empty()),
        }
        .map_err(|e| KernelError::Http(e.to_string()))?;
        let resp = self
            .upstream
            .send(req)
            .await
            .map_err(|e| KernelError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| KernelError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Starts kernel `kernel.name`, runs its warm-up, and answers once it is
    /// idle. Kernels already running in the server (left by a binderd that
    /// crashed while warming it) are shut down first: a pooled binder holds
    /// exactly one, the warm one.
    pub async fn warm(
        &self,
        kernel: &Kernel,
        deadline: Instant,
    ) -> Result<WarmKernel, KernelError> {
        let timeout = || KernelError::Timeout {
            name: kernel.name.clone(),
        };
        let steps = async {
            self.check_spec(&kernel.name).await?;
            for id in self.kernel_ids().await? {
                self.call(Method::DELETE, &format!("api/kernels/{id}"), None)
                    .await?;
            }
            let id = self.start(&kernel.name).await?;
            let code = kernel
                .warmup
                .as_deref()
                .filter(|c| !c.trim().is_empty())
                .unwrap_or(FIRST_CELL);
            let mut channels = Channels::connect(self.addr, self.base, &id).await?;
            let outcome = channels.execute(code).await?;
            channels.close().await;
            match outcome.error {
                Some((ename, evalue)) => Err(KernelError::Raised {
                    name: kernel.name.clone(),
                    ename,
                    evalue,
                }),
                None => Ok(WarmKernel {
                    id,
                    name: kernel.name.clone(),
                }),
            }
        };
        tokio::time::timeout_at(deadline, steps)
            .await
            .map_err(|_| timeout())?
    }

    /// Opens kernel `id`'s channels and holds them ([`Held`]) for the
    /// reader's first client: the server sets up a new channels connection
    /// (its ZMQ sockets, and a `kernel_info` "nudge" until IOPub answers)
    /// before it passes a client's first message on, 6–23 ms here; held
    /// from before the handout, that is done when the reader comes.
    pub async fn hold_channels(&self, id: &str) -> Result<Held, KernelError> {
        let session = random_secret();
        let target = format!(
            "{}api/kernels/{id}/channels?session_id={session}",
            self.base
        );
        held::open(self.addr, &target)
            .await
            .map_err(|e| KernelError::WebSocket(e.to_string()))
    }

    /// Refuses a kernel name the server does not have, and a server that
    /// has no Jupyter API at all, with a message saying which.
    async fn check_spec(&self, name: &str) -> Result<(), KernelError> {
        let path = "api/kernelspecs?no_track_activity=1";
        let (status, body) = self.call(Method::GET, path, None).await?;
        let specs: Option<Value> = serde_json::from_slice(&body).ok();
        let Some(specs) = specs
            .filter(|_| status.is_success())
            .and_then(|v| v.get("kernelspecs").cloned())
            .and_then(|v| v.as_object().cloned())
        else {
            return Err(KernelError::NoJupyter {
                path: format!("{}api/kernelspecs", self.base),
                status: if status.is_success() {
                    format!("{status} without a kernelspecs list")
                } else {
                    status.to_string()
                },
            });
        };
        if specs.contains_key(name) {
            return Ok(());
        }
        let mut known: Vec<&str> = specs.keys().map(String::as_str).collect();
        known.sort_unstable();
        Err(KernelError::NoSuchKernel {
            name: name.to_owned(),
            known: known.join(", "),
        })
    }

    async fn kernel_ids(&self) -> Result<Vec<String>, KernelError> {
        Ok(self
            .kernels()
            .await?
            .iter()
            .filter_map(|k| k.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    async fn kernels(&self) -> Result<Vec<Value>, KernelError> {
        let (status, body) = self
            .call(Method::GET, "api/kernels?no_track_activity=1", None)
            .await?;
        if !status.is_success() {
            return Err(KernelError::Http(format!(
                "GET api/kernels answered {status}"
            )));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(list)) => Ok(list),
            _ => Err(KernelError::Http("GET api/kernels: not a list".into())),
        }
    }

    async fn start(&self, name: &str) -> Result<String, KernelError> {
        let (status, body) = self
            .call(Method::POST, "api/kernels", Some(&json!({ "name": name })))
            .await?;
        let model: Option<Value> = serde_json::from_slice(&body).ok();
        let id = model
            .as_ref()
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str);
        match id {
            Some(id) if status.is_success() => Ok(id.to_owned()),
            _ => Err(KernelError::Start {
                name: name.to_owned(),
                status: status.as_u16(),
                message: model
                    .as_ref()
                    .and_then(|m| m.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect()),
            }),
        }
    }

    /// The server's own view of activity: whether a kernel is executing,
    /// and its `last_activity` (kernels' messages and API calls).
    pub async fn activity(&self) -> Result<Activity, KernelError> {
        let busy = self.kernels().await?.iter().any(|k| {
            matches!(
                k.get("execution_state").and_then(Value::as_str),
                Some("busy" | "starting")
            )
        });
        // `api/status` is not itself counted as activity by the server.
        let (status, body) = self.call(Method::GET, "api/status", None).await?;
        let last_activity = status
            .is_success()
            .then(|| serde_json::from_slice::<Value>(&body).ok())
            .flatten()
            .and_then(|v| {
                v.get("last_activity")
                    .and_then(Value::as_str)
                    .and_then(parse_utc)
            });
        Ok(Activity {
            busy,
            last_activity,
        })
    }
}

/// What the server says of its own activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// A kernel is executing (or still starting).
    pub busy: bool,
    /// Unix seconds of the server's `last_activity`, if it said.
    pub last_activity: Option<u64>,
}

/// Unix seconds of a UTC ISO 8601 time as Jupyter writes it
/// (`2026-11-28T20:55:11.123456Z`, or with `+00:00`).
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
    // days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jupyter_times_parse_to_unix_seconds() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_utc("2026-11-28T20:55:11.123456Z"),
            Some(1_795_899_311)
        );
        assert_eq!(parse_utc("2000-02-29T12:00:00+00:00"), Some(951_825_600));
        assert_eq!(parse_utc("2026-11-28T20:55:11"), None, "no zone");
        assert_eq!(parse_utc("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc("garbage"), None);
    }
}
