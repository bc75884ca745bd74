use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use time::macros::datetime;

use super::*;
use crate::audit::record::{full_record, Outcome};
use crate::audit::SqliteBackend;

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    (dir, path)
}

fn rec(i: i64) -> AuditRecord {
    full_record(
        datetime!(2025-03-01 12:00 UTC) + time::Duration::seconds(i),
        "shop",
        "cart",
        Outcome::Issued,
    )
}

/// Wraps a real backend, counts transactions, and makes each one slow, as an fsync
/// on a real disk is, so that concurrent callers pile up behind it.
struct CountingBackend {
    inner: SqliteBackend,
    appends: Arc<AtomicUsize>,
    largest_batch: Arc<AtomicUsize>,
    delay: Duration,
}

impl CountingBackend {
    fn new(path: &std::path::Path, delay: Duration) -> Self {
        Self {
            inner: SqliteBackend::open(path).unwrap(),
            appends: Arc::default(),
            largest_batch: Arc::default(),
            delay,
        }
    }
}

impl AuditBackend for CountingBackend {
    fn append(&mut self, batch: &[AuditRecord]) -> Result<(), AuditError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.largest_batch.fetch_max(batch.len(), Ordering::SeqCst);
        // A slow disk, on the writer's own thread.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(self.delay);
        self.inner.append(batch)
    }

    fn query(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        self.inner.query(q)
    }
}

/// A backend whose disk is full.
struct FailingBackend;

impl AuditBackend for FailingBackend {
    fn append(&mut self, _batch: &[AuditRecord]) -> Result<(), AuditError> {
        // A slow disk, on the writer's own thread.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(2));
        Err(AuditError::Io {
            path: PathBuf::from("/full/audit.db"),
            context: "appending a batch",
            source: std::io::Error::other("no space left on device"),
        })
    }

    fn query(&mut self, _q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        Ok(Vec::new())
    }
}

/// A backend with a bug.
struct PanickingBackend;

impl AuditBackend for PanickingBackend {
    fn append(&mut self, _batch: &[AuditRecord]) -> Result<(), AuditError> {
        panic!("backend bug (expected by this test)");
    }

    fn query(&mut self, _q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        panic!("backend bug (expected by this test)");
    }
}

#[tokio::test]
async fn a_resolved_record_is_visible_to_a_fresh_connection() {
    let (_dir, path) = temp_db();
    let log = AuditLog::start(
        Box::new(SqliteBackend::open(&path).unwrap()),
        GroupCommitConfig::default(),
    );
    log.record(rec(0)).await.unwrap();
    // A different connection, opened after `record` resolved: the row is on disk.
    let mut fresh = SqliteBackend::open_read_only(&path).unwrap();
    assert_eq!(fresh.query(&AuditQuery::default()).unwrap(), vec![rec(0)]);
    assert_eq!(log.batches_committed(), 1);
    assert_eq!(log.records_committed(), 1);
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_share_transactions() {
    const N: i64 = 200;
    let (_dir, path) = temp_db();
    let backend = CountingBackend::new(&path, Duration::from_millis(5));
    let appends = Arc::clone(&backend.appends);
    let log = AuditLog::start(Box::new(backend), GroupCommitConfig::default());
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(rec(i)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let transactions = appends.load(Ordering::SeqCst);
    assert!(
        transactions < 20,
        "{N} records took {transactions} transactions"
    );
    assert_eq!(log.batches_committed(), transactions as u64);
    assert_eq!(log.records_committed(), N as u64);
    let stored = log.query(AuditQuery::default()).await.unwrap();
    assert_eq!(stored, (0..N).map(rec).collect::<Vec<_>>());
    log.shutdown().await;
}

#[tokio::test]
async fn max_batch_bounds_each_transaction() {
    let (_dir, path) = temp_db();
    let backend = CountingBackend::new(&path, Duration::from_millis(20));
    let appends = Arc::clone(&backend.appends);
    let largest_batch = Arc::clone(&backend.largest_batch);
    let cfg = GroupCommitConfig {
        max_batch: 4,
        queue_capacity: 64,
        ..GroupCommitConfig::default()
    };
    let log = AuditLog::start(Box::new(backend), cfg);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(rec(i)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        largest_batch.load(Ordering::SeqCst),
        4,
        "batches fill up to max_batch"
    );
    assert!(
        appends.load(Ordering::SeqCst) >= 5,
        "20 records, at most 4 per batch"
    );
    log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_fails_every_waiter() {
    let log = AuditLog::start(Box::new(FailingBackend), GroupCommitConfig::default());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(rec(i)).await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        let AuditError::CommitFailed { source, .. } = &err else {
            panic!("unexpected error: {err}");
        };
        assert!(matches!(**source, AuditError::Io { .. }), "{err}");
    }
    assert_eq!(log.records_committed(), 0);
    assert!(log.batches_failed() >= 1);
    // The writer survives a failed batch: the next call is answered too.
    assert!(log.record(rec(99)).await.is_err());
    assert_eq!(log.query(AuditQuery::default()).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_dead_writer_fails_calls_instead_of_hanging() {
    let log = AuditLog::start(Box::new(PanickingBackend), GroupCommitConfig::default());
    let first = tokio::time::timeout(Duration::from_secs(5), log.record(rec(0)))
        .await
        .expect("record must not hang");
    assert!(matches!(first, Err(AuditError::WriterGone)), "{first:?}");
    let later = tokio::time::timeout(Duration::from_secs(5), log.record(rec(1)))
        .await
        .expect("record must not hang");
    assert!(matches!(later, Err(AuditError::WriterGone)), "{later:?}");
    let query = tokio::time::timeout(Duration::from_secs(5), log.query(AuditQuery::default()))
        .await
        .expect("query must not hang");
    assert!(matches!(query, Err(AuditError::WriterGone)), "{query:?}");
    tokio::time::timeout(Duration::from_secs(5), log.shutdown())
        .await
        .expect("shutdown must not hang");
}

#[tokio::test]
async fn shutdown_of_the_last_handle_waits_for_the_writer_to_exit() {
    let (_dir, path) = temp_db();
    let log = AuditLog::start(
        Box::new(SqliteBackend::open(&path).unwrap()),
        GroupCommitConfig::default(),
    );
    let other = log.clone();
    other.record(rec(0)).await.unwrap();
    // Not the last handle: returns at once, and the log keeps working.
    other.shutdown().await;
    log.record(rec(1)).await.unwrap();
    log.shutdown().await;
    // The writer thread dropped its connection on exit: the WAL was checkpointed and
    // the file can be opened for writing again with everything in it.
    let mut again = SqliteBackend::open(&path).unwrap();
    assert_eq!(
        again.query(&AuditQuery::default()).unwrap(),
        vec![rec(0), rec(1)]
    );
}

/// A commit delay no test would sit through: a test that finishes (under its
/// generous guard) proves the writer did not wait it out.
const FOREVER: Duration = Duration::from_secs(3600);

/// A guard against hanging, not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

/// Awaits `record` under [`GUARD`]: it must be committed without waiting out
/// [`FOREVER`] (`why` says why it should not wait).
async fn without_waiting(
    record: impl std::future::Future<Output = Result<(), AuditError>>,
    why: &str,
) {
    tokio::time::timeout(GUARD, record)
        .await
        .expect(why)
        .unwrap();
}

fn waiting_log(path: &std::path::Path, siblings: usize) -> (AuditLog, Arc<AtomicUsize>) {
    let backend = CountingBackend::new(path, Duration::ZERO);
    let appends = Arc::clone(&backend.appends);
    let cfg = GroupCommitConfig {
        commit_delay: FOREVER,
        commit_siblings: siblings,
        ..GroupCommitConfig::default()
    };
    (AuditLog::start(Box::new(backend), cfg), appends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_batch_waits_for_announced_records_and_shares_their_commit() {
    let (_dir, path) = temp_db();
    let (log, appends) = waiting_log(&path, 1);
    let (first, second) = (log.expect(), log.expect());
    let both = async {
        // `first` is queued while `second` is still announced: the writer holds the
        // batch until `second` arrives, then commits both at once.
        let first = first.record(rec(0));
        tokio::pin!(first);
        tokio::select! {
            biased;
            _ = &mut first => panic!("committed without the announced record"),
            _ = tokio::task::yield_now() => {}
        }
        let (a, b) = tokio::join!(first, second.record(rec(1)));
        a.unwrap();
        b.unwrap();
    };
    tokio::time::timeout(GUARD, both)
        .await
        .expect("the last arrival wakes the writer");
    assert_eq!(
        appends.load(Ordering::SeqCst),
        1,
        "one transaction for both"
    );
    assert_eq!(log.records_committed(), 2);
    let stored = log.query(AuditQuery::default()).await.unwrap();
    assert_eq!(stored, vec![rec(0), rec(1)]);
    log.shutdown().await;
}

#[tokio::test]
async fn a_caller_alone_is_committed_without_waiting() {
    let (_dir, path) = temp_db();
    let (log, appends) = waiting_log(&path, 1);
    without_waiting(
        log.expect().record(rec(0)),
        "nothing else announced: no wait",
    )
    .await;
    without_waiting(log.record(rec(1)), "nothing announced: no wait").await;
    assert_eq!(appends.load(Ordering::SeqCst), 2);
    log.shutdown().await;
}

#[tokio::test]
async fn a_withdrawn_announcement_does_not_hold_a_batch_back() {
    let (_dir, path) = temp_db();
    let (log, _appends) = waiting_log(&path, 1);
    let withdrawn = log.expect();
    drop(withdrawn);
    without_waiting(
        log.expect().record(rec(0)),
        "the dropped announcement is forgotten",
    )
    .await;
    log.shutdown().await;
}

#[tokio::test]
async fn fewer_announced_records_than_commit_siblings_do_not_hold_a_batch_back() {
    let (_dir, path) = temp_db();
    let (log, _appends) = waiting_log(&path, 2);
    let on_its_way = log.expect();
    without_waiting(
        log.record(rec(0)),
        "one sibling on its way, two needed to wait",
    )
    .await;
    drop(on_its_way);
    log.shutdown().await;
}

#[test]
fn errors_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<AuditError>();
    check::<AuditLog>();
}

#[tokio::test]
async fn the_log_is_unhealthy_after_a_failed_commit_and_healthy_again_after_a_good_one() {
    let log = AuditLog::start(Box::new(FailingBackend), GroupCommitConfig::default());
    assert!(log.healthy().is_ok(), "nothing has failed yet");
    assert!(log.record(rec(0)).await.is_err());
    let err = log.healthy().unwrap_err();
    assert!(err.contains("failed"), "{err}");

    let (_dir, path) = temp_db();
    let log = AuditLog::start(
        Box::new(SqliteBackend::open(&path).unwrap()),
        GroupCommitConfig::default(),
    );
    log.record(rec(0)).await.unwrap();
    assert!(log.healthy().is_ok());
    // The database deleted under the running log: unhealthy at once, before
    // any record is attempted, and no record is taken.
    std::fs::remove_file(&path).unwrap();
    let err = log.healthy().unwrap_err();
    assert!(err.contains("deleted"), "{err}");
    assert!(log.record(rec(1)).await.is_err());
}

/// A real store whose disk is full while `full` is set.
struct FillableBackend {
    inner: SqliteBackend,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl AuditBackend for FillableBackend {
    fn append(&mut self, batch: &[AuditRecord]) -> Result<(), AuditError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(AuditError::Io {
                path: PathBuf::from("/full/audit.db"),
                context: "appending a batch",
                source: std::io::Error::other("no space left on device"),
            });
        }
        self.inner.append(batch)
    }

    fn query(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        self.inner.query(q)
    }
}

#[tokio::test]
async fn a_decision_whose_batch_failed_is_recorded_as_withheld_once_the_store_is_back() {
    let (_dir, path) = temp_db();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let log = AuditLog::start(
        Box::new(FillableBackend {
            inner: SqliteBackend::open(&path).unwrap(),
            full: Arc::clone(&full),
        }),
        GroupCommitConfig::default(),
    );
    let mut lost = rec(1);
    lost.serial = Some("0a0a".to_owned());
    assert!(log.record(lost).await.is_err());
    assert!(log.query(AuditQuery::default()).await.unwrap().is_empty());
    full.store(false, Ordering::SeqCst);
    log.record(rec(2)).await.unwrap();
    let stored = log.query(AuditQuery::default()).await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let withheld = stored
        .iter()
        .find(|r| r.serial.as_deref() == Some("0a0a"))
        .unwrap();
    assert_eq!(withheld.outcome, Outcome::Refused);
    let reason = withheld.reason.as_deref().unwrap();
    assert!(
        reason.contains("no space left on device") && reason.contains("the decision was: issued"),
        "{reason}"
    );
    log.shutdown().await;
}

#[tokio::test]
async fn a_revocation_whose_batch_failed_is_recorded_late_still_as_a_revocation() {
    let (_dir, path) = temp_db();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let log = AuditLog::start(
        Box::new(FillableBackend {
            inner: SqliteBackend::open(&path).unwrap(),
            full: Arc::clone(&full),
        }),
        GroupCommitConfig::default(),
    );
    let mut revoked = rec(1);
    revoked.outcome = Outcome::Revoked;
    revoked.serial = Some("0b0b".to_owned());
    revoked.reason = Some("revoked: keyCompromise".to_owned());
    assert!(log.record(revoked).await.is_err());
    full.store(false, Ordering::SeqCst);
    log.record(rec(2)).await.unwrap();
    let stored = log
        .query(AuditQuery {
            outcome: Some(Outcome::Revoked),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].serial.as_deref(), Some("0b0b"));
    let reason = stored[0].reason.as_deref().unwrap();
    assert!(
        reason.starts_with("revoked: keyCompromise; recorded late")
            && reason.contains("no space left on device"),
        "{reason}"
    );
    log.shutdown().await;
}
