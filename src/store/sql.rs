//! The SQL: the schema, reading the store at start, replaying the handout
//! journal into it, and one write ([`apply`]) as the writer commits it.

use std::path::Path;

use rusqlite::{params, Connection};

use super::journal::{self, Assigned};
use super::{Loaded, Source, StoreError, StoredBinder, StoredBinding};
use crate::auth::Owner;
use crate::binder::State;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS binders (
    id TEXT PRIMARY KEY,
    binding TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    owner TEXT,
    instance TEXT,
    created_at INTEGER NOT NULL,
    assigned_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pool_sizes (
    binding TEXT PRIMARY KEY,
    min INTEGER NOT NULL,
    max INTEGER NOT NULL
);
";

/// The name a state is stored under (its serde name, which the store also
/// reads back through serde).
pub(super) fn state_name(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::StartingClaimed => "starting_claimed",
        State::Idle => "idle",
        State::Assigned => "assigned",
        State::Stopping => "stopping",
        State::Stopped => "stopped",
        State::Failed => "failed",
        State::Paused => "paused",
    }
}

pub(super) fn load(conn: &Connection) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let mut stmt = conn.prepare("SELECT name, spec, owner, created_at, source FROM bindings")?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredBinding {
            name: r.get(0)?,
            spec: r.get(1)?,
            owner: r.get(2)?,
            created_at: r.get::<_, i64>(3)? as u64,
            source: if r.get::<_, String>(4)? == "file" {
                Source::File
            } else {
                Source::Api
            },
        })
    })?;
    for row in rows {
        loaded.bindings.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT id, binding, token, state, owner, instance, created_at, assigned_at FROM binders",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
        ))
    })?;
    for row in rows {
        let (id, binding, token, state, owner, instance, created_at, assigned_at) = row?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("binder {id}: bad {what}"));
        let state: State = serde_json::from_value(serde_json::Value::String(state))
            .map_err(|_| corrupt("state"))?;
        let owner = owner
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|_| corrupt("owner"))?;
        let instance = instance
            .map(|i| serde_json::from_str(&i))
            .transpose()
            .map_err(|_| corrupt("instance"))?;
        loaded.binders.push(StoredBinder {
            id,
            binding,
            token,
            state,
            owner,
            instance,
            created_at: created_at as u64,
            assigned_at: assigned_at as u64,
        });
    }
    let mut stmt = conn.prepare("SELECT binding, min, max FROM pool_sizes")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    for row in rows {
        loaded.pool_sizes.push(row?);
    }
    Ok(loaded)
}

/// One write to the store, as the writer thread applies it ([`apply`]).
pub(super) enum Op {
    PutBinding(StoredBinding),
    DeleteBinding(String),
    PutBinder(StoredBinder),
    Assign(Assigned),
    Claim {
        id: String,
        owner: Owner,
    },
    SetBinderState(String, State),
    DeleteBinder(String),
    SetPoolSize(String, u32, u32),
    /// Writes nothing: acknowledged once every write before it is committed.
    Barrier,
}

/// Binder id → SQLite rowid, kept by the writer so that a handout updates its
/// row by rowid (one integer b-tree descent) rather than through the id index
/// (a string-keyed descent through random pages, then the table). The writer
/// makes every insert and delete of a binder row, and updates the map with
/// each, so an entry is always its binder's current row.
pub(super) type Rows = std::collections::HashMap<String, i64>;

/// Applies one write inside the writer's transaction, keeping `rows` in
/// step with the binder rows it inserts and deletes.
pub(super) fn apply(conn: &Connection, op: &Op, rows: &mut Rows) -> rusqlite::Result<()> {
    match op {
        Op::PutBinding(b) => put_binding(conn, b)?,
        Op::DeleteBinding(name) => delete_binding(conn, name)?,
        Op::PutBinder(b) => {
            put_binder(conn, b)?;
            rows.insert(b.id.clone(), conn.last_insert_rowid());
        }
        Op::Assign(assigned) => assign(conn, assigned, rows)?,
        Op::Claim { id, owner } => {
            let owner = serde_json::to_string(owner).ok();
            conn.prepare_cached("UPDATE binders SET state = ?2, owner = ?3 WHERE id = ?1")?
                .execute(params![id, state_name(State::StartingClaimed), owner])?;
        }
        Op::SetBinderState(id, state) => {
            conn.prepare_cached("UPDATE binders SET state = ?2 WHERE id = ?1")?
                .execute(params![id, state_name(*state)])?;
        }
        Op::DeleteBinder(id) => {
            conn.prepare_cached("DELETE FROM binders WHERE id = ?1")?
                .execute([id])?;
            rows.remove(id);
        }
        Op::SetPoolSize(binding, min, max) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO pool_sizes (binding, min, max) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![binding, min, max])?;
        }
        Op::Barrier => {}
    }
    Ok(())
}

/// Writes a binding's row, replacing the one of that name.
fn put_binding(conn: &Connection, b: &StoredBinding) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO bindings (name, spec, owner, created_at, source)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        b.name,
        b.spec,
        b.owner,
        b.created_at as i64,
        if b.source == Source::File {
            "file"
        } else {
            "api"
        }
    ])?;
    Ok(())
}

/// Deletes a binding's row and the pool sizes of its pools.
fn delete_binding(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM bindings WHERE name = ?1")?
        .execute([name])?;
    // Its profiles' pools are filed as `name/profile`.
    conn.prepare_cached(
        "DELETE FROM pool_sizes WHERE binding = ?1 OR substr(binding, 1, length(?1) + 1) = ?1 || '/'",
    )?
    .execute([name])?;
    Ok(())
}

/// Writes a binder's row, replacing the one with that id (the new row's
/// rowid is the connection's last insert).
fn put_binder(conn: &Connection, b: &StoredBinder) -> rusqlite::Result<()> {
    let owner = b.owner.as_ref().and_then(|o| serde_json::to_string(o).ok());
    let instance = b
        .instance
        .as_ref()
        .and_then(|i| serde_json::to_string(i).ok());
    conn.prepare_cached(
        "INSERT OR REPLACE INTO binders
         (id, binding, token, state, owner, instance, created_at, assigned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        b.id,
        b.binding,
        b.token,
        state_name(b.state),
        owner,
        instance,
        b.created_at as i64,
        b.assigned_at as i64
    ])?;
    Ok(())
}

/// Records a handout: by rowid when the map has the binder, else by id.
fn assign(conn: &Connection, a: &Assigned, rows: &Rows) -> rusqlite::Result<()> {
    let Assigned {
        id,
        owner,
        assigned_at,
    } = a;
    let state = state_name(State::Assigned);
    // The map follows every insert and delete (this thread makes
    // them all), so its rowid is this binder's row.
    let by_rowid = match rows.get(id) {
        Some(row) => conn
            .prepare_cached(
                "UPDATE binders SET state = ?2, owner = ?3, assigned_at = ?4
                 WHERE rowid = ?1",
            )?
            .execute(params![row, state, owner, *assigned_at as i64])?,
        None => 0,
    };
    if by_rowid == 0 {
        conn.prepare_cached(
            "UPDATE binders SET state = ?2, owner = ?3, assigned_at = ?4 WHERE id = ?1",
        )?
        .execute(params![id, state, owner, *assigned_at as i64])?;
    }
    Ok(())
}

/// Reads the id → rowid map back from the table.
pub(super) fn read_rows(conn: &Connection, rows: &mut Rows) {
    rows.clear();
    if let Ok(mut stmt) = conn.prepare("SELECT id, rowid FROM binders") {
        if let Ok(found) = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        {
            rows.extend(found.flatten());
        }
    }
}

/// Applies the journal a previous run left (its handouts may not all have
/// reached SQLite), then removes it. A line only turns a binder recorded as
/// idle or starting into an assigned one, so it never undoes a later change
/// (a handed-out binder is never idle again) and applying it twice is the
/// same as once.
pub(super) fn replay_journal(conn: &Connection, dir: &Path) -> Result<(), StoreError> {
    let records = journal::read(dir)?;
    if !records.is_empty() {
        let tx = conn.unchecked_transaction()?;
        let mut changed = 0;
        for r in &records {
            changed += tx
                .prepare_cached(
                    "UPDATE binders SET state = ?2, owner = ?3, assigned_at = ?4
                     WHERE id = ?1 AND state IN (?5, ?6)",
                )?
                .execute(params![
                    r.id,
                    state_name(State::Assigned),
                    r.owner,
                    r.assigned_at as i64,
                    state_name(State::Idle),
                    state_name(State::Starting)
                ])?;
        }
        tx.commit()?;
        tracing::info!(lines = records.len(), changed, "handout journal replayed");
    }
    journal::remove(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_stored_under_their_serde_names() {
        use State::*;
        let all = [
            Starting,
            StartingClaimed,
            Idle,
            Assigned,
            Stopping,
            Stopped,
            Failed,
            Paused,
        ];
        for state in all {
            let serde = serde_json::to_value(state).unwrap();
            assert_eq!(serde.as_str(), Some(state_name(state)), "{state:?}");
        }
    }
}
