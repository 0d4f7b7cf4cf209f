//! `binderd bindings|apply|pools|binders|spawn`: the operator's CLI, in the
//! same binary, speaking the HTTP API of a running binderd (`--url`, key from
//! `BINDERD_API_KEY` or `--key-file`, never a flag value that shows in `ps`).
//! Human tables by default, `--output json` for scripts; exit codes say what
//! went wrong: 0 done, 2 usage, 3 unauthorized or forbidden, 4 not found,
//! 5 conflict or full, 1 anything else.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// What every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The binderd to speak to.
    #[arg(
        long,
        env = "BINDERD_URL",
        default_value = "http://127.0.0.1:8585",
        global = true
    )]
    pub url: String,
    /// A file holding the API key (else `BINDERD_API_KEY`).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// `table` for people, `json` for scripts (the API's JSON).
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum BindingsCommand {
    /// The bindings this key may see.
    List,
    /// One binding.
    Get { name: String },
    /// Delete a binding (`--force`: also while binders are handed out).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// Every pool's counts.
    List,
    /// Set `minPool` and/or `maxPool`.
    Resize {
        name: String,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BindersCommand {
    /// Handed-out binders this key may see (of one binding, or all).
    List { binding: Option<String> },
    /// Stop a binder.
    Stop { id: String },
    /// Pause a binder (its files are kept).
    Pause { id: String },
    /// Resume a paused binder.
    Resume { id: String },
    /// A binder's output (`--follow`: keep printing what comes).
    Logs {
        id: String,
        #[arg(long)]
        follow: bool,
    },
}

/// An admin command, as `main` parsed it.
#[derive(Debug)]
pub enum Admin {
    Bindings(BindingsCommand),
    Apply { file: PathBuf },
    Pools(PoolsCommand),
    Binders(BindersCommand),
    Spawn { binding: String },
}

/// Why a command failed: its message and exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub message: String,
    pub code: u8,
}

impl AdminError {
    fn new(code: u8, message: impl Into<String>) -> AdminError {
        AdminError {
            message: message.into(),
            code,
        }
    }

    /// The exit code an HTTP answer's status means.
    fn from_answer(status: u16, body: &Value) -> AdminError {
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

struct Api {
    base: String,
    key: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    fn new(target: &Target) -> Result<Api, AdminError> {
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

    async fn raw(
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
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(AdminError::from_answer(status, &doc));
        }
        Ok(doc)
    }

    /// The binding a binder id belongs to (ids are unique across bindings).
    async fn binding_of(&self, id: &str) -> Result<String, AdminError> {
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

/// Runs one admin command; what it prints goes to `out`.
pub async fn run(target: &Target, command: Admin, out: &mut dyn Write) -> Result<(), AdminError> {
    let api = Api::new(target)?;
    let json = target.output == Output::Json;
    let print = |out: &mut dyn Write, doc: &Value| {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(doc).unwrap_or_default()
        );
    };
    match command {
        Admin::Bindings(BindingsCommand::List) => {
            let docs = api.call(Method::GET, "/bindings", None).await?;
            if json {
                print(out, &docs);
            } else {
                table(
                    out,
                    &[
                        ("NAME", "name"),
                        ("PUBLIC", "public"),
                        ("MIN", "pool/min"),
                        ("MAX", "pool/max"),
                        ("STATUS", "status"),
                        ("OWNER", "owner"),
                    ],
                    docs,
                );
            }
        }
        Admin::Bindings(BindingsCommand::Get { name }) => {
            print(
                out,
                &api.call(Method::GET, &format!("/bindings/{name}"), None)
                    .await?,
            );
        }
        Admin::Bindings(BindingsCommand::Delete { name, force }) => {
            let path = format!("/bindings/{name}{}", if force { "?force=true" } else { "" });
            let doc = api.call(Method::DELETE, &path, None).await?;
            if json {
                print(out, &doc);
            } else {
                let _ = writeln!(out, "binding '{name}' deleted");
            }
        }
        Admin::Apply { file } => {
            let binding = read_binding_file(&file)?;
            let name = binding["name"].as_str().unwrap_or_default().to_owned();
            let (status, bytes) = api
                .raw(Method::PUT, &format!("/bindings/{name}"), Some(&binding))
                .await?;
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status >= 400 {
                return Err(AdminError::from_answer(status, &doc));
            }
            if json {
                print(out, &doc);
            } else {
                let what = if status == 201 { "created" } else { "replaced" };
                let name = doc["name"].as_str().unwrap_or(&name);
                let _ = writeln!(out, "binding '{name}' {what}");
            }
        }
        Admin::Pools(PoolsCommand::List) => {
            let docs = api.call(Method::GET, "/pools", None).await?;
            if json {
                print(out, &docs);
            } else {
                table(
                    out,
                    &[
                        ("NAME", "name"),
                        ("AVAILABLE", "available"),
                        ("STARTING", "starting"),
                        ("RUNNING", "running"),
                        ("MIN", "minPool"),
                        ("MAX", "maxPool"),
                        ("TARGET", "targetPool"),
                    ],
                    docs,
                );
            }
        }
        Admin::Pools(PoolsCommand::Resize { name, min, max }) => {
            if min.is_none() && max.is_none() {
                return Err(AdminError::new(2, "give --min and/or --max"));
            }
            let mut body = serde_json::Map::new();
            if let Some(min) = min {
                body.insert("minPool".into(), min.into());
            }
            if let Some(max) = max {
                body.insert("maxPool".into(), max.into());
            }
            let doc = api
                .call(
                    Method::POST,
                    &format!("/pools/{name}"),
                    Some(&Value::Object(body)),
                )
                .await?;
            if json {
                print(out, &doc);
            } else {
                let _ = writeln!(
                    out,
                    "pool '{name}': minPool {}, maxPool {}",
                    text(&doc["minPool"]),
                    text(&doc["maxPool"])
                );
            }
        }
        Admin::Binders(BindersCommand::List { binding }) => {
            let names: Vec<String> = match binding {
                Some(b) => vec![b],
                None => api
                    .call(Method::GET, "/bindings", None)
                    .await?
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["name"].as_str().map(str::to_owned))
                    .collect(),
            };
            let mut all = Vec::new();
            for name in names {
                let docs = api
                    .call(Method::GET, &format!("/binders/{name}"), None)
                    .await?;
                all.extend(docs.as_array().cloned().unwrap_or_default());
            }
            let docs = Value::Array(all);
            if json {
                print(out, &docs);
            } else {
                table(
                    out,
                    &[
                        ("ID", "id"),
                        ("BINDING", "binding"),
                        ("STATE", "state"),
                        ("ASSIGNED", "assigned_at"),
                        ("LAST ACTIVITY", "last_activity"),
                    ],
                    docs,
                );
            }
        }
        Admin::Binders(BindersCommand::Stop { id }) => {
            let binding = api.binding_of(&id).await?;
            let doc = api
                .call(Method::DELETE, &format!("/binders/{binding}/{id}"), None)
                .await?;
            if json {
                print(out, &doc);
            } else {
                let _ = writeln!(out, "binder {id} stopping");
            }
        }
        Admin::Binders(BindersCommand::Pause { id }) => pause(&api, &id, true, json, out).await?,
        Admin::Binders(BindersCommand::Resume { id }) => pause(&api, &id, false, json, out).await?,
        Admin::Binders(BindersCommand::Logs { id, follow }) => {
            let binding = api.binding_of(&id).await?;
            let path = format!("/binders/{binding}/{id}/logs");
            let mut shown = 0usize;
            loop {
                let (status, bytes) = api.raw(Method::GET, &path, None).await?;
                if status >= 400 {
                    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if shown > 0 && status == 404 {
                        return Ok(()); // the binder stopped while followed
                    }
                    return Err(AdminError::from_answer(status, &doc));
                }
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                for line in lines.iter().skip(shown) {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
                shown = shown.max(lines.len());
                if !follow {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Admin::Spawn { binding } => spawn(&api, &binding, json, out).await?,
    }
    Ok(())
}

/// `pause` / `resume`.
async fn pause(
    api: &Api,
    id: &str,
    paused: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let binding = api.binding_of(id).await?;
    let doc = api
        .call(
            Method::POST,
            &format!("/binders/{binding}/{id}/actions/pause"),
            Some(&serde_json::json!({ "paused": paused })),
        )
        .await?;
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    } else {
        let _ = writeln!(out, "binder {id} {}", text(&doc["state"]));
    }
    Ok(())
}

/// `spawn`: a binder, with a progress bar while a cold one starts (from the
/// binder's event stream), then its URL.
async fn spawn(
    api: &Api,
    binding: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let mut doc = api
        .call(Method::POST, &format!("/binders/{binding}"), None)
        .await?;
    if doc["state"] == "starting" {
        let id = doc["id"].as_str().unwrap_or_default().to_owned();
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("starting a binder of '{binding}'"));
        bar.enable_steady_tick(Duration::from_millis(100));
        let (status, bytes) = api
            .raw(
                Method::GET,
                &format!("/binders/{binding}/{id}/events"),
                None,
            )
            .await?;
        bar.finish_and_clear();
        if status >= 400 {
            let err: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(AdminError::from_answer(status, &err));
        }
        let events = String::from_utf8_lossy(&bytes);
        let last = events
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .next_back()
            .unwrap_or(Value::Null);
        if last["state"] != "ready" {
            return Err(AdminError::new(
                1,
                format!(
                    "the binder did not start: {}",
                    last["reason"].as_str().unwrap_or("unknown reason")
                ),
            ));
        }
        doc = last;
    }
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            out,
            "{}{}",
            api.base,
            doc["location"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// A binding file (the TOML of `config/bindings/`) as the API's JSON; its
/// name defaults to the file's stem. A TOML error names line and column.
pub fn read_binding_file(path: &Path) -> Result<Value, AdminError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AdminError::new(1, format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        AdminError::new(
            2,
            format!(
                "{}{at}: {}",
                path.display(),
                e.message().lines().next().unwrap_or("invalid TOML")
            ),
        )
    })?;
    let mut doc = serde_json::to_value(table).map_err(|e| AdminError::new(1, e.to_string()))?;
    if doc.get("name").is_none() {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        doc["name"] = Value::String(stem.to_owned());
    }
    Ok(doc)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `docs` (a JSON array) as aligned columns: each column a heading
/// and the field it shows (`pool/min` reads `doc["pool"]["min"]`).
fn table(out: &mut dyn Write, columns: &[(&str, &str)], docs: Value) {
    let field = |doc: &Value, path: &str| path.split('/').fold(doc, |v, k| &v[k]).clone();
    let rows: Vec<Vec<String>> = docs
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            columns
                .iter()
                .map(|(_, path)| text(&field(d, path)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let _ = writeln!(
        out,
        "{}",
        line(columns.iter().map(|(h, _)| h.to_string()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_the_line_and_column() {
        let dir = std::env::temp_dir().join(format!("binderd-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "public = true\ncommand = [\"x\"\npool = 1\n").unwrap();
        let e = read_binding_file(&bad).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(
            e.message.contains("line 2") || e.message.contains("line 3"),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\n'), "{}", e.message);
        let good = dir.join("Named.toml");
        std::fs::write(&good, "command = [\"x\"]\n").unwrap();
        assert_eq!(read_binding_file(&good).unwrap()["name"], "Named");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn answers_map_to_exit_codes() {
        let e = AdminError::from_answer(403, &serde_json::json!({"error": {"message": "no"}}));
        assert_eq!((e.code, e.message.as_str()), (3, "no"));
        assert_eq!(AdminError::from_answer(404, &Value::Null).code, 4);
        assert_eq!(AdminError::from_answer(503, &Value::Null).code, 5);
        assert_eq!(AdminError::from_answer(500, &Value::Null).code, 1);
    }
}
