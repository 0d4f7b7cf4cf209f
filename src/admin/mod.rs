//! `binderd bindings|apply|pools|binders|spawn`: the operator's CLI, in the
//! same binary, speaking the HTTP API of a running binderd (`--url`, key from
//! `BINDERD_API_KEY` or `--key-file`, never a flag value that shows in `ps`).
//! Human tables by default, `--output json` for scripts; exit codes say what
//! went wrong: 0 done, 2 usage, 3 unauthorized or forbidden, 4 not found,
//! 5 conflict or full, 1 anything else.
//!
//! Rooms: this file is the commands (one function per noun); `client.rs`
//! the HTTP client and [`AdminError`]; `table.rs` the typed rows each list
//! prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::Value;

mod client;
mod table;

pub use client::AdminError;
use client::Api;
use table::{BinderRow, BindingRow, PoolRow};

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
    /// Resolve a binding's `ref` again and roll its pool over when the
    /// commit changed (a `PUT` of the binding as it is).
    Refresh { name: String },
    /// The output of a binding's last content build.
    BuildLogs { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// Every pool's counts.
    List,
    /// Set `minPool` and/or `maxPool`.
    Resize {
        name: String,
        /// One profile's own pool (default: the binding's pool, which
        /// serves its default profile).
        #[arg(long)]
        profile: Option<String>,
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
    Apply {
        file: PathBuf,
    },
    Pools(PoolsCommand),
    Binders(BindersCommand),
    Spawn {
        binding: String,
        profile: Option<String>,
    },
}

/// What a command prints to, and how.
struct Report<'o> {
    out: &'o mut dyn Write,
    json: bool,
}

impl Report<'_> {
    /// A list: the API's JSON as it came, or a table of `R`'s rows.
    fn list<R: table::Row>(&mut self, docs: Value) -> Result<(), AdminError> {
        if self.json {
            self.json(&docs);
            return Ok(());
        }
        let rows: Vec<R> = serde_json::from_value(docs)
            .map_err(|e| AdminError::new(1, format!("unexpected answer: {e}")))?;
        table::print(self.out, &rows);
        Ok(())
    }

    /// One document: its JSON, or `line` for people.
    fn done(&mut self, doc: &Value, line: impl FnOnce(&Value) -> String) {
        if self.json {
            self.json(doc);
        } else {
            let _ = writeln!(self.out, "{}", line(doc));
        }
    }

    fn json(&mut self, doc: &Value) {
        let _ = writeln!(
            self.out,
            "{}",
            serde_json::to_string_pretty(doc).unwrap_or_default()
        );
    }
}

/// Runs one admin command; what it prints goes to `out`.
pub async fn run(target: &Target, command: Admin, out: &mut dyn Write) -> Result<(), AdminError> {
    let api = Api::new(target)?;
    let mut report = Report {
        out,
        json: target.output == Output::Json,
    };
    match command {
        Admin::Bindings(command) => bindings(&api, command, &mut report).await,
        Admin::Apply { file } => apply(&api, &file, &mut report).await,
        Admin::Pools(command) => pools(&api, command, &mut report).await,
        Admin::Binders(command) => binders(&api, command, &mut report).await,
        Admin::Spawn { binding, profile } => {
            spawn(&api, &binding, profile.as_deref(), &mut report).await
        }
    }
}

async fn bindings(
    api: &Api,
    command: BindingsCommand,
    report: &mut Report<'_>,
) -> Result<(), AdminError> {
    match command {
        BindingsCommand::List => {
            report.list::<BindingRow>(api.call(Method::GET, "/bindings", None).await?)
        }
        BindingsCommand::Get { name } => {
            let doc = api
                .call(Method::GET, &format!("/bindings/{name}"), None)
                .await?;
            report.json(&doc);
            Ok(())
        }
        BindingsCommand::Delete { name, force } => {
            let path = format!("/bindings/{name}{}", if force { "?force=true" } else { "" });
            let doc = api.call(Method::DELETE, &path, None).await?;
            report.done(&doc, |_| format!("binding '{name}' deleted"));
            Ok(())
        }
        BindingsCommand::Refresh { name } => {
            let path = format!("/bindings/{name}");
            let before = api.call(Method::GET, &path, None).await?;
            let after = api.call(Method::PUT, &path, Some(&before)).await?;
            report.done(&after, |after| {
                let (old, new) = (&before["resolvedRef"], &after["resolvedRef"]);
                if old == new {
                    format!("binding '{name}': still at {}", text(new))
                } else {
                    format!(
                        "binding '{name}': {} -> {}, rolling its pool over",
                        text(old),
                        text(new)
                    )
                }
            });
            Ok(())
        }
        BindingsCommand::BuildLogs { name } => {
            let path = format!("/bindings/{name}/build/logs");
            let (status, bytes) = api.raw(Method::GET, &path, None).await?;
            if status >= 400 {
                let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                return Err(AdminError::from_answer(status, &doc));
            }
            let _ = report.out.write_all(&bytes);
            Ok(())
        }
    }
}

/// `apply -f file`: `PUT` the file's binding (201 created, 200 replaced).
async fn apply(api: &Api, file: &Path, report: &mut Report<'_>) -> Result<(), AdminError> {
    let binding = read_binding_file(file)?;
    let name = binding["name"].as_str().unwrap_or_default().to_owned();
    let (status, doc) = api
        .call_status(Method::PUT, &format!("/bindings/{name}"), Some(&binding))
        .await?;
    let what = if status == 201 { "created" } else { "replaced" };
    report.done(&doc, |doc| {
        format!("binding '{}' {what}", doc["name"].as_str().unwrap_or(&name))
    });
    Ok(())
}

async fn pools(
    api: &Api,
    command: PoolsCommand,
    report: &mut Report<'_>,
) -> Result<(), AdminError> {
    match command {
        PoolsCommand::List => {
            let docs = api.call(Method::GET, "/pools", None).await?;
            if report.json {
                report.json(&docs);
                Ok(())
            } else {
                report.list::<PoolRow>(one_row_per_profile(docs))
            }
        }
        PoolsCommand::Resize {
            name,
            profile,
            min,
            max,
        } => {
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
                    &format!(
                        "/pools/{name}{}",
                        profile
                            .as_deref()
                            .map(|p| format!("?profile={}", escape(p)))
                            .unwrap_or_default()
                    ),
                    Some(&Value::Object(body)),
                )
                .await?;
            report.done(&doc, |doc| {
                format!(
                    "pool '{name}{}': minPool {}, maxPool {}",
                    profile
                        .as_deref()
                        .map(|p| format!("/{p}"))
                        .unwrap_or_default(),
                    text(&doc["minPool"]),
                    text(&doc["maxPool"])
                )
            });
            Ok(())
        }
    }
}

async fn binders(
    api: &Api,
    command: BindersCommand,
    report: &mut Report<'_>,
) -> Result<(), AdminError> {
    match command {
        BindersCommand::List { binding } => {
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
            report.list::<BinderRow>(Value::Array(all))
        }
        BindersCommand::Stop { id } => {
            let binding = api.binding_of(&id).await?;
            let doc = api
                .call(Method::DELETE, &format!("/binders/{binding}/{id}"), None)
                .await?;
            report.done(&doc, |_| format!("binder {id} stopping"));
            Ok(())
        }
        BindersCommand::Pause { id } => pause(api, &id, true, report).await,
        BindersCommand::Resume { id } => pause(api, &id, false, report).await,
        BindersCommand::Logs { id, follow } => logs(api, &id, follow, report.out).await,
    }
}

/// `pause` / `resume`.
async fn pause(
    api: &Api,
    id: &str,
    paused: bool,
    report: &mut Report<'_>,
) -> Result<(), AdminError> {
    let binding = api.binding_of(id).await?;
    let doc = api
        .call(
            Method::POST,
            &format!("/binders/{binding}/{id}/actions/pause"),
            Some(&serde_json::json!({ "paused": paused })),
        )
        .await?;
    report.done(&doc, |doc| format!("binder {id} {}", text(&doc["state"])));
    Ok(())
}

/// `logs`: what the binder wrote; `--follow` prints new lines each second
/// until it stops.
async fn logs(api: &Api, id: &str, follow: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    let binding = api.binding_of(id).await?;
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

/// `spawn`: a binder, with a progress bar while a cold one starts (from the
/// binder's event stream), then its URL.
async fn spawn(
    api: &Api,
    binding: &str,
    profile: Option<&str>,
    report: &mut Report<'_>,
) -> Result<(), AdminError> {
    let body = profile.map(|p| serde_json::json!({ "profile": p }));
    let mut doc = api
        .call(Method::POST, &format!("/binders/{binding}"), body.as_ref())
        .await?;
    if doc["state"] == "starting" {
        let id = doc["id"].as_str().unwrap_or_default().to_owned();
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("starting a binder of '{binding}'"));
        bar.enable_steady_tick(Duration::from_millis(100));
        let events_path = format!("/binders/{binding}/{id}/events");
        let events = api.raw(Method::GET, &events_path, None);
        // While it waits, the pool's build (its environment or files being
        // made) shows on the bar, line by line.
        tokio::pin!(events);
        let (status, bytes) = loop {
            tokio::select! {
                answer = &mut events => break answer?,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let Ok(pool) = api.call(Method::GET, &format!("/pools/{binding}"), None).await else {
                        continue;
                    };
                    bar.set_message(match pool.get("build") {
                        Some(b) => format!(
                            "'{binding}' is {}: {}",
                            b["phase"].as_str().unwrap_or("building"),
                            b["line"].as_str().unwrap_or("").trim()
                        ),
                        None => format!("starting a binder of '{binding}'"),
                    });
                }
            }
        };
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
    report.done(&doc, |doc| {
        format!(
            "{}{}",
            api.base,
            doc["location"].as_str().unwrap_or_default()
        )
    });
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

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `GET /pools` as the table shows it: a binding with profiles as one row
/// per profile, named `binding/profile`.
fn one_row_per_profile(docs: Value) -> Value {
    let Value::Array(pools) = docs else {
        return docs;
    };
    let mut rows = Vec::new();
    for pool in pools {
        match pool.get("profiles").and_then(Value::as_object) {
            Some(profiles) => {
                let name = text(&pool["name"]);
                for (profile, counts) in profiles {
                    let mut row = counts.clone();
                    row["name"] = format!("{name}/{profile}").into();
                    rows.push(row);
                }
            }
            None => rows.push(pool),
        }
    }
    Value::Array(rows)
}

/// A query value with everything but letters, digits, `.`, `_` and `-`
/// percent-encoded.
fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
}
