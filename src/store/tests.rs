//! The store, against a real SQLite file: what is written comes back after
//! a restart, the journal replays, the threads behave.

use std::time::{Duration, Instant};

use super::writer::{CHECKPOINT_IDLE, CHECKPOINT_POLL};
use super::*;
use crate::auth::Owner;
use crate::backend::Instance;
use crate::binder::State;
use std::net::SocketAddr;

/// Once the writer is idle, commits reach the database file itself (a
/// copy of it without the WAL has them).
#[tokio::test]
async fn idle_commits_are_checkpointed_into_the_database_file() {
    let dir = fresh_dir("ckpt");
    let (store, _) = Store::open(&dir).unwrap();
    store.put_binder(binder("ck1")).await.unwrap();
    let copy = dir.join("copy.sqlite3");
    let rows_in_copy = || {
        std::fs::copy(dir.join("binderd.sqlite3"), &copy).unwrap();
        let conn = Connection::open(&copy).unwrap();
        conn.query_row("SELECT count(*) FROM binders", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    assert_eq!(rows_in_copy(), 0, "still only in the WAL");
    let deadline = Instant::now() + CHECKPOINT_IDLE * 5;
    while rows_in_copy() == 0 {
        assert!(Instant::now() < deadline, "never checkpointed");
        tokio::time::sleep(CHECKPOINT_POLL).await;
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An empty data dir of this test's own.
pub(super) fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("binderd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn binder(id: &str) -> StoredBinder {
    StoredBinder {
        id: id.into(),
        binding: "b".into(),
        token: format!("tok-{id}"),
        state: State::Idle,
        owner: None,
        instance: Some(Instance {
            handle: "42".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        }),
        created_at: 7,
        assigned_at: 0,
    }
}

#[tokio::test]
async fn writes_survive_reopen_and_batch_concurrently() {
    let dir = fresh_dir("store");
    {
        let (store, loaded) = Store::open(&dir).unwrap();
        assert!(loaded.bindings.is_empty());
        store
            .put_binding(StoredBinding {
                name: "b".into(),
                spec: "{}".into(),
                owner: "alice".into(),
                created_at: 1,
                source: Source::Api,
            })
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("id{i}");
                store.put_binder(binder(&id)).await.unwrap();
                if i % 2 == 0 {
                    store
                        .assign(&id, Owner::Key("alice".into()), 99)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.delete_binder("id1").await.unwrap();
        store.set_pool_size("b", 3, 9).await.unwrap();
    }
    let (store, loaded) = Store::open(&dir).unwrap();
    assert_eq!(loaded.bindings.len(), 1);
    assert_eq!(loaded.bindings[0].owner, "alice");
    assert_eq!(loaded.binders.len(), 99);
    let assigned = loaded
        .binders
        .iter()
        .filter(|b| b.state == State::Assigned)
        .count();
    assert_eq!(assigned, 50);
    let b0 = loaded.binders.iter().find(|b| b.id == "id0").unwrap();
    assert_eq!(b0.owner, Some(Owner::Key("alice".into())));
    assert_eq!(b0.assigned_at, 99);
    assert_eq!(b0.instance, binder("id0").instance);
    assert_eq!(loaded.pool_sizes, vec![("b".to_string(), 3, 9)]);
    assert_eq!(
        read_binder_state(&dir, "id0").unwrap().as_deref(),
        Some("assigned")
    );
    // After a reopen the writer finds rows by the rowids it read back;
    // a binder recorded again (a new rowid) is still found.
    let mut again = binder("id3");
    again.created_at = 8;
    store.put_binder(again).await.unwrap();
    store.assign("id3", Owner::Anonymous, 100).await.unwrap();
    store.assign("id5", Owner::Anonymous, 101).await.unwrap();
    assert_eq!(
        read_binder_state(&dir, "id3").unwrap().as_deref(),
        Some("assigned")
    );
    assert_eq!(
        read_binder_state(&dir, "id5").unwrap().as_deref(),
        Some("assigned")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A warm handout is durable when `record_handout` returns: its line is
/// in the journal file, and that line alone (SQLite still saying
/// "idle", as after a crash before the writer's commit) makes the next
/// start see the binder assigned. A line never undoes a later change.
#[tokio::test]
async fn journaled_handouts_are_durable_before_sqlite_has_them() {
    let dir = fresh_dir("journal-store");
    {
        let (store, _) = Store::open(&dir).unwrap();
        for id in ["j1", "j2", "j3", "j4"] {
            store.put_binder(binder(id)).await.unwrap();
        }
        store
            .record_handout("j1", &Owner::Key("bob".into()), 500)
            .unwrap();
        let lines = journal::read(&dir).unwrap();
        assert_eq!(lines.len(), 1, "not in the journal when the call returned");
        assert_eq!(lines[0].id, "j1");
    }
    // What a crash before the writer's commit leaves: lines in the journal
    // for binders SQLite still has as idle (j2), starting (j3), paused
    // since (j4: a later change the line must not undo), or gone (j9).
    let conn = Connection::open(dir.join("binderd.sqlite3")).unwrap();
    conn.execute_batch(
        "UPDATE binders SET state = 'idle', owner = NULL, assigned_at = 0;
         UPDATE binders SET state = 'starting' WHERE id = 'j3';
         UPDATE binders SET state = 'paused', assigned_at = 7 WHERE id = 'j4';",
    )
    .unwrap();
    drop(conn);
    let journal = Journal::create(&dir).unwrap();
    for (id, at) in [("j2", 501), ("j3", 502), ("j4", 503), ("j9", 504)] {
        let record = Assigned::new(id, &Owner::Anonymous, at);
        journal.append(record, |_, _| {}).unwrap();
    }
    drop(journal);
    let (_store, loaded) = Store::open(&dir).unwrap();
    let get = |id: &str| loaded.binders.iter().find(|b| b.id == id).unwrap();
    // The journal is removed only once replayed at a start: j1's line,
    // written by `record_handout` above, is replayed onto the row this
    // test set back to idle.
    assert_eq!(get("j1").state, State::Assigned);
    assert_eq!(get("j1").owner, Some(Owner::Key("bob".into())));
    assert_eq!(get("j1").assigned_at, 500);
    assert_eq!(
        (get("j2").state, get("j2").assigned_at),
        (State::Assigned, 501)
    );
    assert_eq!(
        (get("j3").state, get("j3").assigned_at),
        (State::Assigned, 502)
    );
    assert_eq!((get("j4").state, get("j4").assigned_at), (State::Paused, 7));
    assert_eq!(loaded.binders.len(), 4);
    assert!(
        journal::read(&dir).unwrap().is_empty(),
        "replayed journal left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under a stream of handouts the journal is rotated and the old one
/// removed once committed, and every handout is in SQLite after a
/// reopen.
#[tokio::test]
async fn the_journal_stays_short_and_loses_nothing() {
    let dir = fresh_dir("journal-rotate");
    let n = 400;
    {
        let (store, _) = Store::open(&dir).unwrap();
        for i in 0..n {
            store.put_binder(binder(&format!("r{i}"))).await.unwrap();
        }
        for i in 0..n {
            store
                .record_handout(&format!("r{i}"), &Owner::Anonymous, 1000 + i)
                .unwrap();
            if i % 50 == 49 {
                // Let the writer catch up now and then, as a real load does.
                store.set_pool_size("b", 1, 2).await.unwrap();
            }
        }
        store.set_pool_size("b", 1, 2).await.unwrap();
        let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len());
        assert!(
            size("binderd.journal").unwrap() < 2 * journal::ROTATE_BYTES,
            "never rotated"
        );
        // The writer removes it after the batch that commits its last
        // line (acknowledged before that): a later batch sees it gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while size("binderd.journal.1").is_ok() {
            assert!(
                Instant::now() < deadline,
                "old journal kept after its commit"
            );
            store.set_pool_size("b", 1, 2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            journal::read(&dir).unwrap().len() < n as usize,
            "every line still in the journal"
        );
    }
    // SQLite alone (the journal removed) has them all.
    std::fs::remove_file(dir.join("binderd.journal")).unwrap();
    let (_store, loaded) = Store::open(&dir).unwrap();
    let assigned = loaded
        .binders
        .iter()
        .filter(|b| b.state == State::Assigned)
        .count();
    assert_eq!(assigned, n as usize);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The running mark tells a clean stop, a kill on this boot and a stop
/// that may have lost the page cache apart.
#[tokio::test]
async fn the_previous_run_is_read_from_the_running_mark() {
    let dir = fresh_dir("store-previous");
    let (store, loaded) = Store::open(&dir).unwrap();
    assert_eq!(loaded.previous, PreviousRun::Clean, "a first start");
    drop(store);
    let (store, loaded) = Store::open(&dir).unwrap();
    assert_eq!(
        loaded.previous,
        PreviousRun::Crashed,
        "no clean stop, same boot"
    );
    assert!(loaded.previous.handouts_all_recorded());
    drop(store);
    std::fs::write(dir.join("binderd.running"), "another-boot").unwrap();
    let (store, loaded) = Store::open(&dir).unwrap();
    assert_eq!(loaded.previous, PreviousRun::Rebooted);
    assert!(!loaded.previous.handouts_all_recorded());
    store.close().await.unwrap();
    assert!(!dir.join("binderd.running").exists());
    let (_store, loaded) = Store::open(&dir).unwrap();
    assert_eq!(loaded.previous, PreviousRun::Clean, "after a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A binding's delete takes its profiles' pool sizes (`b/large`) with it,
/// and no other binding's, however its name is spelled (`_` is a LIKE
/// wildcard; the match must not be one).
#[tokio::test]
async fn deleting_a_binding_drops_its_profiles_sizes_only() {
    let dir = fresh_dir("profile-sizes");
    let (store, _) = Store::open(&dir).unwrap();
    for key in [
        "b_x",
        "b_x/large",
        "b_x/small",
        "bax/large",
        "b_xy/large",
        "b",
    ] {
        store.set_pool_size(key, 1, 2).await.unwrap();
    }
    store.delete_binding("b_x").await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let (_store, loaded) = Store::open(&dir).unwrap();
    let mut left: Vec<_> = loaded.pool_sizes.iter().map(|s| s.0.as_str()).collect();
    left.sort();
    assert_eq!(left, vec!["b", "b_xy/large", "bax/large"]);
    let _ = std::fs::remove_dir_all(&dir);
}
