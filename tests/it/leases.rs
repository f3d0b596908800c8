//! The fleet's leases on the real databases (issue 17, item 1): one holder per folder at a time,
//! a takeover only after the expiry by the database's clock and always with a new epoch, a lease
//! lost once expired, and a fenced batch that commits nothing once its lease is another worker's.

use std::time::Duration;

use mailintake::mail_source::{Disposition, Uid};
use mailintake::store::{ImapLocation, Store, StoreError, WorkerInfo};

use crate::helpers::*;

fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.to_string(),
        host: "test-host".into(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
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
    assert!(store.renew_lease(&mut a).await.unwrap());
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
    assert!(!store.renew_lease(&mut a).await.unwrap(), "a lost it");
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
