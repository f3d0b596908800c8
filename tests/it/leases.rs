//! The fleet's leases on the real databases (issue 17, item 1): one holder per folder at a time,
//! a takeover only after the expiry by the database's clock and always with a new epoch, a lease
//! lost once expired, and a fenced batch — or any other write of a folder task: its checkpoint,
//! its dispositions done or refused, its waiting messages — that commits nothing once its lease
//! is another worker's.

use std::time::Duration;

use mailintake::mail_source::{Disposition, Uid};
use mailintake::store::{
    FencedWrite, FolderState, ImapLocation, Lease, Store, StoreError, StuckFailure, WorkerInfo,
};

use crate::helpers::*;

fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.to_string(),
        host: "test-host".into(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Renews `lease` alone; whether the database did.
async fn renew(store: &Store, lease: &mut Lease) -> bool {
    let key = (lease.mailbox.clone(), lease.folder.clone(), lease.epoch);
    let (at, renewed) = store
        .renew_leases(&lease.holder, lease.ttl, std::slice::from_ref(&key))
        .await
        .unwrap();
    if renewed.contains(&key) {
        lease.renewed_at = at;
    }
    renewed.contains(&key)
}

/// Long enough that a statement delayed by a loaded machine never sees a renewed lease expire.
const TTL: Duration = Duration::from_secs(2);

async fn one_holder_at_a_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url).await.unwrap();
    for w in ["a", "b"] {
        store.heartbeat(&worker(w)).await.unwrap();
    }
    let mut a = store
        .acquire_lease("support", "INBOX", "a", TTL)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert!(
        store
            .acquire_lease("support", "INBOX", "b", TTL)
            .await
            .unwrap()
            .is_none(),
        "held by a: b cannot take it"
    );
    // Another folder is another lease.
    assert!(
        store
            .acquire_lease("support", "Archive", "b", TTL)
            .await
            .unwrap()
            .is_some()
    );
    // Renewed in time, it stays a's past the first TTL.
    tokio::time::sleep(TTL / 2).await;
    assert!(renew(&store, &mut a).await);
    tokio::time::sleep(TTL / 2 + Duration::from_millis(100)).await;
    assert!(
        store
            .acquire_lease("support", "INBOX", "b", TTL)
            .await
            .unwrap()
            .is_none(),
        "renewed: not expired yet"
    );
    // Not renewed: expired by the database's clock, b takes it over with the next epoch, and a's
    // renewal fails from then on.
    tokio::time::sleep(TTL).await;
    let b = store
        .acquire_lease("support", "INBOX", "b", TTL)
        .await
        .unwrap()
        .expect("expired: b takes it over");
    assert_eq!(b.epoch, a.epoch + 1);
    assert!(!renew(&store, &mut a).await, "a lost it");
    // A release by the old holder changes nothing; b's own release frees it for a at once.
    store.release_lease(&a).await.unwrap();
    assert!(
        store
            .acquire_lease("support", "INBOX", "a", TTL)
            .await
            .unwrap()
            .is_none()
    );
    store.release_lease(&b).await.unwrap();
    let again = store
        .acquire_lease("support", "INBOX", "a", TTL)
        .await
        .unwrap()
        .expect("released: free at once");
    assert_eq!(again.epoch, b.epoch + 1);

    // Workers: both alive; a stopping releases every lease it holds.
    let live = store.live_workers(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        live.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(store.stop_worker("b").await.unwrap(), 1, "b held Archive");
    let live = store.live_workers(Duration::from_secs(30)).await.unwrap();
    assert_eq!(live.len(), 1);
    let holders = store.lease_holders().await.unwrap();
    assert_eq!(
        holders,
        [
            ("support".into(), "Archive".into(), None),
            ("support".into(), "INBOX".into(), Some("a".into())),
        ]
    );
    store.close().await;
}

/// A worker's leases are renewed together, a few hundred per statement: 260 of them in two
/// statements, every one renewed, except the one another worker took over (its epoch is no
/// longer a's) and the one whose epoch a does not hold.
async fn renewed_together(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url).await.unwrap();
    for w in ["a", "b"] {
        store.heartbeat(&worker(w)).await.unwrap();
    }
    let ttl = Duration::from_secs(30);
    let mut keys = Vec::new();
    for n in 0..260 {
        let lease = store
            .acquire_lease(&format!("box{n:03}"), "INBOX", "a", ttl)
            .await
            .unwrap()
            .unwrap();
        keys.push((lease.mailbox, lease.folder, lease.epoch));
    }
    // box000 is taken over (released by a, acquired by b); box001 is named with a wrong epoch.
    store.stop_worker("a").await.unwrap();
    for key in keys.iter_mut().skip(1) {
        let again = store
            .acquire_lease(&key.0, "INBOX", "a", ttl)
            .await
            .unwrap()
            .unwrap();
        key.2 = again.epoch;
    }
    assert!(
        store
            .acquire_lease("box000", "INBOX", "b", ttl)
            .await
            .unwrap()
            .is_some()
    );
    keys[1].2 -= 1;
    let (_, renewed) = store.renew_leases("a", ttl, &keys).await.unwrap();
    assert_eq!(renewed.len(), 258);
    assert!(!renewed.contains(&keys[0]), "b's now");
    assert!(!renewed.contains(&keys[1]), "not the epoch a holds");
    assert!(keys[2..].iter().all(|k| renewed.contains(k)));
    store.close().await;
}

/// A coordination round's units are acquired together, a few hundred per statement: of 260
/// units in two statements, a takes every one that is free (never used, released, expired) or
/// its own already (with a new epoch all the same), and not the one b holds.
async fn acquired_together(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url).await.unwrap();
    for w in ["a", "b"] {
        store.heartbeat(&worker(w)).await.unwrap();
    }
    let ttl = Duration::from_secs(30);
    // box000: b's; box001: b's, expired; box002: a's already; box003: released by b.
    let held = store
        .acquire_lease("box000", "INBOX", "b", ttl)
        .await
        .unwrap()
        .unwrap();
    store
        .acquire_lease("box001", "INBOX", "b", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    let own = store
        .acquire_lease("box002", "INBOX", "a", ttl)
        .await
        .unwrap()
        .unwrap();
    let released = store
        .acquire_lease("box003", "INBOX", "b", ttl)
        .await
        .unwrap()
        .unwrap();
    store.release_lease(&released).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let units: Vec<(String, String)> = (0..260)
        .map(|n| (format!("box{n:03}"), "INBOX".to_string()))
        .collect();
    let taken = store.acquire_leases(&units, "a", ttl).await.unwrap();
    let epochs: std::collections::BTreeMap<String, i64> = taken
        .iter()
        .map(|l| {
            assert_eq!(
                (l.holder.as_str(), l.folder.as_str(), l.ttl),
                ("a", "INBOX", ttl)
            );
            (l.mailbox.clone(), l.epoch)
        })
        .collect();
    assert_eq!(taken.len(), 259, "all but b's");
    assert!(!epochs.contains_key("box000"), "b holds it");
    assert_eq!(
        epochs["box001"], 2,
        "expired: taken over with the next epoch"
    );
    assert_eq!(epochs["box002"], own.epoch + 1, "a's own: a new tenure");
    assert_eq!(epochs["box003"], released.epoch + 1, "released: free");
    assert!(
        (4..260).all(|n| epochs[&format!("box{n:03}")] == 1),
        "new rows"
    );
    // Each is a's now, by the database: renewed with the epochs it was given; b's stays b's.
    let keys: Vec<(String, String, i64)> = taken
        .iter()
        .map(|l| (l.mailbox.clone(), l.folder.clone(), l.epoch))
        .collect();
    let (_, renewed) = store.renew_leases("a", ttl, &keys).await.unwrap();
    assert_eq!(renewed.len(), 259);
    let holders = store.lease_holders().await.unwrap();
    assert_eq!(holders.len(), 260);
    assert!(
        holders
            .iter()
            .all(|(m, _, h)| { h.as_deref() == Some(if m == "box000" { "b" } else { "a" }) })
    );
    // Nothing to take: nothing taken, nothing changed.
    assert!(
        store
            .acquire_leases(&units[..1], "a", ttl)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .acquire_leases(&[], "a", ttl)
            .await
            .unwrap()
            .is_empty()
    );
    let (_, still) = store
        .renew_leases("b", ttl, &[(held.mailbox, held.folder, held.epoch)])
        .await
        .unwrap();
    assert_eq!(still.len(), 1, "b's lease untouched");
    store.close().await;
}

#[tokio::test]
async fn a_rounds_leases_are_acquired_together_on_sqlite() {
    acquired_together(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_rounds_leases_are_acquired_together_on_postgres() {
    acquired_together(Backend::Postgres).await;
}

#[tokio::test]
async fn a_workers_leases_are_renewed_together_on_sqlite() {
    renewed_together(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_workers_leases_are_renewed_together_on_postgres() {
    renewed_together(Backend::Postgres).await;
}

#[tokio::test]
async fn one_holder_per_folder_and_a_takeover_only_after_expiry_with_a_new_epoch_on_sqlite() {
    one_holder_at_a_time(Backend::Sqlite).await;
}

#[tokio::test]
async fn one_holder_per_folder_and_a_takeover_only_after_expiry_with_a_new_epoch_on_postgres() {
    one_holder_at_a_time(Backend::Postgres).await;
}

/// A worker whose lease expired and was taken over while it wrote a batch (paused by a GC, a
/// stalled disk, SIGSTOP) commits nothing of it; with its lease held, the same batch commits.
async fn a_fenced_batch(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url).await.unwrap();
    let (raw, _) = unique_fixture("plain.eml");
    let mail = mailintake::ingest::parse(&raw).unwrap();
    let at = |uid: u32| ImapLocation {
        mailbox: "support",
        folder: "INBOX",
        uidvalidity: 7,
        uid: Uid(uid),
        size: raw.len() as u64,
        internal_date_ms: None,
    };
    let lease = store
        .acquire_lease("support", "INBOX", "a", TTL)
        .await
        .unwrap()
        .unwrap();
    let take_over = || async {
        tokio::time::sleep(TTL + Duration::from_millis(200)).await;
        let b = store
            .acquire_lease("support", "INBOX", "b", TTL)
            .await
            .unwrap();
        assert!(b.is_some(), "expired: b took it over");
        b
    };
    // On SQLite a batch holds the database's write lock from its start, so the takeover comes
    // before it; on PostgreSQL while a's batch is being written.
    let mut b = None;
    if backend == Backend::Sqlite {
        b = take_over().await;
    }
    let mut tx = store.begin().await.unwrap();
    tx.fence(&lease);
    tx.new_ticket(&at(1), &mail, None, None, None, None, &Disposition::Seen)
        .await
        .unwrap();
    if backend == Backend::Postgres {
        b = take_over().await;
    }
    match tx.commit().await {
        Err(StoreError::LeaseLost { epoch, .. }) => assert_eq!(epoch, lease.epoch),
        other => panic!("committed despite the lost lease: {other:?}"),
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM imap_messages").await, 0);

    // b, holding it, commits the same batch.
    let b = b.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.fence(&b);
    tx.new_ticket(&at(1), &mail, None, None, None, None, &Disposition::Seen)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM tickets").await, 1);
    store.close().await;
}

#[tokio::test]
async fn a_fenced_batch_commits_nothing_once_its_lease_is_taken_over_on_sqlite() {
    a_fenced_batch(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_fenced_batch_commits_nothing_once_its_lease_is_taken_over_on_postgres() {
    a_fenced_batch(Backend::Postgres).await;
}

/// Whether `result` is the refusal of a fenced write `write` under `lease`.
fn lost<T: std::fmt::Debug>(result: Result<T, StoreError>, lease: &Lease, write: FencedWrite) {
    match result {
        Err(StoreError::LeaseLost {
            epoch, write: w, ..
        }) => {
            assert_eq!(epoch, lease.epoch);
            assert_eq!(w, write);
        }
        other => panic!("{write} written despite the lost lease: {other:?}"),
    }
}

/// A worker whose lease was taken over (paused past its TTL) writes nothing of the folder
/// outside batches either: not its checkpoint, not a disposition done or refused, not a waiting
/// message, not the UIDs to take alone, not the reconciliation's time. The new holder writes
/// them all.
async fn fenced_folder_writes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url).await.unwrap();
    let (raw, _) = unique_fixture("plain.eml");
    let mail = mailintake::ingest::parse(&raw).unwrap();
    let (mailbox, folder) = ("support", "INBOX");
    let state = FolderState {
        uidvalidity: 7,
        last_uid: Uid(0),
        ingest_after_ms: None,
        ack_after_ms: None,
        first_uid_next: Some(Uid(1)),
    };
    let a = store
        .acquire_lease(mailbox, folder, "a", TTL)
        .await
        .unwrap()
        .unwrap();
    store
        .set_folder_state(mailbox, folder, state, Some(&a))
        .await
        .unwrap();
    // a commits message 1 (its disposition pending), then is paused past its TTL; b takes over.
    let mut tx = store.begin().await.unwrap();
    tx.fence(&a);
    let at = ImapLocation {
        mailbox,
        folder,
        uidvalidity: 7,
        uid: Uid(1),
        size: raw.len() as u64,
        internal_date_ms: None,
    };
    tx.new_ticket(&at, &mail, None, None, None, None, &Disposition::Seen)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let b = store
        .acquire_lease(mailbox, folder, "b", TTL)
        .await
        .unwrap()
        .expect("expired: b takes it over");

    // Every write of a is refused, and none of it shows.
    let uids = [Uid(1)];
    lost(
        store
            .mark_disposed(mailbox, folder, 7, &uids, Some(&a))
            .await,
        &a,
        FencedWrite::DispositionsDone,
    );
    lost(
        store
            .note_refused_disposition(mailbox, folder, 7, &uids, "NO [OVERQUOTA]", Some(&a))
            .await,
        &a,
        FencedWrite::DispositionsRefused,
    );
    lost(
        store
            .advance_checkpoint(mailbox, folder, 7, Uid(5), Some(&a))
            .await,
        &a,
        FencedWrite::Checkpoint,
    );
    let resynced = FolderState {
        uidvalidity: 8,
        ..state
    };
    lost(
        store
            .set_folder_state(mailbox, folder, resynced, Some(&a))
            .await,
        &a,
        FencedWrite::FolderState,
    );
    lost(
        store
            .set_alone_range(mailbox, folder, Some((Uid(2), Uid(4))), Some(&a))
            .await,
        &a,
        FencedWrite::AloneRange,
    );
    lost(
        store
            .note_stuck(
                mailbox,
                folder,
                7,
                Uid(2),
                StuckFailure::Refused,
                "NO",
                Some(&a),
            )
            .await,
        &a,
        FencedWrite::StuckMessage,
    );
    lost(
        store.mark_reconciled(mailbox, folder, 1, Some(&a)).await,
        &a,
        FencedWrite::Reconciled,
    );
    let pending = store
        .pending_dispositions(mailbox, folder, 7)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "still pending: {pending:?}");
    assert!(!pending[0].refused);
    assert_eq!(
        store.folder_state(mailbox, folder).await.unwrap(),
        Some(FolderState {
            last_uid: Uid(1),
            ..state
        }),
        "the checkpoint where a's batch left it"
    );
    assert_eq!(store.alone_range(mailbox, folder).await.unwrap(), None);
    assert!(
        store
            .stuck_messages(mailbox, folder)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.reconciled_at(mailbox, folder).await.unwrap(), None);
    // The error says what was not written, and whose the folder is now.
    let refused = store
        .mark_disposed(mailbox, folder, 7, &uids, Some(&a))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("support/INBOX")
            && refused.contains("no longer this worker's")
            && refused.contains("the dispositions done"),
        "{refused}"
    );

    // b, holding it, writes them.
    store
        .mark_disposed(mailbox, folder, 7, &uids, Some(&b))
        .await
        .unwrap();
    store
        .advance_checkpoint(mailbox, folder, 7, Uid(5), Some(&b))
        .await
        .unwrap();
    store
        .note_stuck(
            mailbox,
            folder,
            7,
            Uid(6),
            StuckFailure::Refused,
            "NO",
            Some(&b),
        )
        .await
        .unwrap();
    store
        .clear_stuck(mailbox, folder, 7, Uid(6), Some(&b))
        .await
        .unwrap();
    store
        .mark_reconciled(mailbox, folder, 1, Some(&b))
        .await
        .unwrap();
    assert!(
        store
            .pending_dispositions(mailbox, folder, 7)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .folder_state(mailbox, folder)
            .await
            .unwrap()
            .unwrap()
            .last_uid,
        Uid(5)
    );
    assert_eq!(store.reconciled_at(mailbox, folder).await.unwrap(), Some(1));
    store.close().await;
}

#[tokio::test]
async fn a_folder_task_whose_lease_was_taken_writes_nothing_outside_batches_either_on_sqlite() {
    fenced_folder_writes(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_folder_task_whose_lease_was_taken_writes_nothing_outside_batches_either_on_postgres() {
    fenced_folder_writes(Backend::Postgres).await;
}
