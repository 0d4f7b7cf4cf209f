//! The rows the list commands print: each a typed view of the API's JSON
//! (only the fields shown; anything else in the answer is ignored) and its
//! columns, printed aligned.

use std::io::Write;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::text;

/// A row of a list's table.
pub(super) trait Row: DeserializeOwned {
    const HEADINGS: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

fn show<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// `GET /bindings`.
#[derive(Deserialize)]
pub(super) struct BindingRow {
    name: String,
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    pool: Option<Sizes>,
    #[serde(default)]
    status: Value,
    #[serde(default)]
    owner: Value,
}

#[derive(Deserialize)]
struct Sizes {
    min: Option<u32>,
    max: Option<u32>,
}

impl Row for BindingRow {
    const HEADINGS: &'static [&'static str] = &["NAME", "PUBLIC", "MIN", "MAX", "STATUS", "OWNER"];
    fn cells(&self) -> Vec<String> {
        let (min, max) = self.pool.as_ref().map_or((None, None), |p| (p.min, p.max));
        vec![
            self.name.clone(),
            show(&self.public),
            show(&min),
            show(&max),
            text(&self.status),
            text(&self.owner),
        ]
    }
}

/// `GET /pools`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PoolRow {
    #[serde(default)]
    name: Option<String>,
    available: u32,
    starting: u32,
    running: u32,
    min_pool: u32,
    max_pool: u32,
    #[serde(default)]
    target_pool: Option<u32>,
}

impl Row for PoolRow {
    const HEADINGS: &'static [&'static str] = &[
        "NAME",
        "AVAILABLE",
        "STARTING",
        "RUNNING",
        "MIN",
        "MAX",
        "TARGET",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            show(&self.name),
            self.available.to_string(),
            self.starting.to_string(),
            self.running.to_string(),
            self.min_pool.to_string(),
            self.max_pool.to_string(),
            show(&self.target_pool),
        ]
    }
}

/// `GET /binders/{binding}`.
#[derive(Deserialize)]
pub(super) struct BinderRow {
    id: String,
    binding: String,
    state: String,
    #[serde(default)]
    assigned_at: Option<u64>,
    #[serde(default)]
    last_activity: Option<u64>,
}

impl Row for BinderRow {
    const HEADINGS: &'static [&'static str] =
        &["ID", "BINDING", "STATE", "ASSIGNED", "LAST ACTIVITY"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.binding.clone(),
            self.state.clone(),
            show(&self.assigned_at),
            show(&self.last_activity),
        ]
    }
}

/// Prints `rows` as aligned columns under their headings.
pub(super) fn print<R: Row>(out: &mut dyn Write, rows: &[R]) {
    let rows: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let mut widths: Vec<usize> = R::HEADINGS.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let headings: Vec<String> = R::HEADINGS.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&headings));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_the_api_json_and_line_up() {
        let docs = serde_json::json!([
            {"name": "py", "public": true, "pool": {"min": 2, "max": 10}, "status": null, "owner": "alice", "image": "x"},
            {"name": "a-longer-name", "pool": {"min": 0, "max": 1}}
        ]);
        let rows: Vec<BindingRow> = serde_json::from_value(docs).unwrap();
        let mut out = Vec::new();
        print(&mut out, &rows);
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "NAME           PUBLIC  MIN  MAX  STATUS  OWNER");
        assert_eq!(lines[1], "py             true    2    10   -       alice");
        assert_eq!(lines[2], "a-longer-name  -       0    1    -       -");
        let pools: Vec<PoolRow> = serde_json::from_value(serde_json::json!([
            {"name": "py", "available": 2, "starting": 0, "running": 3, "minPool": 2, "maxPool": 10, "targetPool": 2}
        ]))
        .unwrap();
        assert_eq!(pools[0].cells(), ["py", "2", "0", "3", "2", "10", "2"]);
    }
}
