//! The audit store: the [`AuditBackend`] trait, and [`AuditLog`], the handle the CA
//! records through.
//!
//! [`AuditLog`] implements *group commit*. One dedicated thread owns the backend.
//! [`AuditLog::record`] puts the record on a bounded queue and waits; the thread
//! takes the first queued record, drains whatever else is already queued (up to
//! [`GroupCommitConfig::max_batch`]), appends them all in one transaction, and only
//! then answers every waiter. Under load, one fsync covers many certificates; at
//! rest, a lone record is committed at once (no timer, no added latency).
//!
//! Under load the writer may also wait a little for records it knows are coming
//! (PostgreSQL's `commit_delay` / `commit_siblings`): a caller announces a record
//! with [`AuditLog::expect`] when it starts deciding, and records through the
//! returned [`Expected`]. When a batch is ready while at least
//! [`GroupCommitConfig::commit_siblings`] announced records have not arrived yet,
//! the writer waits for them, up to [`GroupCommitConfig::commit_delay`], before it
//! commits. Each commit is one fsync whatever the batch size, so larger batches
//! cost less CPU per record; a caller that is alone never waits.
//!
//! Rule enforced: `record` resolves `Ok` only once the record is durable. A failed
//! batch fails every record in it, and a dead writer fails every call; nothing ever
//! waits forever, and the queue never grows without bound (a full queue makes callers
//! wait).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::query::AuditQuery;
use super::record::AuditRecord;
use super::AuditError;

/// Where audit records are kept. Implementations are synchronous: an [`AuditLog`]
/// calls them from its one writer thread, never from async code.
pub trait AuditBackend: Send + 'static {
    /// Appends `batch` atomically and durably: when this returns `Ok`, every record
    /// in it survives a crash; when it returns `Err`, none of them was stored.
    fn append(&mut self, batch: &[AuditRecord]) -> Result<(), AuditError>;

    /// The records matching `q`, oldest first (see [`AuditQuery`] for the limit).
    fn query(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError>;

    /// Signs a checkpoint of the store's transparency log if it grew since
    /// the last one; the tree size signed (None: nothing new, or no log).
    fn checkpoint(&mut self, _now: time::OffsetDateTime) -> Result<Option<u64>, AuditError> {
        Ok(None)
    }

    /// A check, callable from any thread, that the store's file is still the one
    /// opened (None: nothing to check).
    fn probe(&self) -> Option<super::sqlite::FileProbe> {
        None
    }
}

/// How long after a failed commit the log reports itself unhealthy (unless a
/// commit succeeds first): long enough for a readiness probe to see it, short
/// enough that traffic comes back to try again once the cause is fixed.
const UNHEALTHY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Tuning for [`AuditLog`]'s group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// The most records appended in one transaction. Default 1024. Values below 1
    /// count as 1.
    pub max_batch: usize,
    /// How many requests may wait in the queue before callers of
    /// [`AuditLog::record`] wait for room. Default 4096. Values below 1 count as 1.
    pub queue_capacity: usize,
    /// The longest the writer holds a ready batch back for announced records that
    /// have not arrived yet ([`AuditLog::expect`]); it commits as soon as they are
    /// all in, or the batch is full. Default 1 ms; zero turns the wait off.
    pub commit_delay: Duration,
    /// The writer waits only if at least this many announced records are still on
    /// their way. Default 1. Values below 1 count as 1.
    pub commit_siblings: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue_capacity: 4096,
            commit_delay: Duration::from_millis(1),
            commit_siblings: 1,
        }
    }
}

/// A cheap, cloneable handle to the audit writer thread.
///
/// The thread flushes what is queued and exits once every handle is gone; use
/// [`AuditLog::shutdown`] on the last handle to wait for that.
#[derive(Debug, Clone)]
pub struct AuditLog {
    // Declared first so that it is dropped before `exited`: when the last `exited`
    // goes, no sender is left and the writer thread can finish.
    tx: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    expected: Arc<ExpectedCount>,
    /// The backend's file check, run from any thread by [`AuditLog::healthy`].
    probe: Option<super::sqlite::FileProbe>,
    exited: Arc<oneshot::Receiver<()>>,
}

/// Records announced with [`AuditLog::expect`] and not yet queued, and the writer
/// thread to wake when the last of them arrives.
#[derive(Debug, Default)]
struct ExpectedCount {
    pending: AtomicUsize,
    writer: OnceLock<Thread>,
}

impl ExpectedCount {
    /// One announced record has been queued (or will never be): forget it, and if
    /// it was the last one, wake the writer in case it is waiting for it.
    fn arrived(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }
}

/// A record announced to the writer ([`AuditLog::expect`]); record it with
/// [`Expected::record`]. Dropping it unrecorded withdraws the announcement.
#[derive(Debug)]
#[must_use = "an announced record should be recorded"]
pub struct Expected<'a> {
    log: &'a AuditLog,
    counted: bool,
}

impl Expected<'_> {
    /// [`AuditLog::record`] for the announced record.
    pub async fn record(mut self, rec: AuditRecord) -> Result<(), AuditError> {
        let answer = self.log.enqueue(rec).await?;
        // Withdrawn only once queued: a writer woken by the last announced record's
        // arrival finds it in the queue.
        self.withdraw();
        answer.await.map_err(|_| AuditError::WriterGone)?
    }

    fn withdraw(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.log.expected.arrived();
        }
    }
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Counters of an [`AuditLog`]'s writer, readable without holding the log open
/// (so a metrics registry can keep them without delaying shutdown).
#[derive(Debug, Clone)]
pub struct AuditStats(Arc<Stats>);

impl AuditStats {
    /// How many transactions the writer has committed.
    pub fn batches_committed(&self) -> u64 {
        self.0.batches_committed.load(Ordering::Relaxed)
    }

    /// How many records the writer has committed.
    pub fn records_committed(&self) -> u64 {
        self.0.records_committed.load(Ordering::Relaxed)
    }

    /// How many transactions failed (each failing all of its records).
    pub fn batches_failed(&self) -> u64 {
        self.0.batches_failed.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every command is an Append; boxing it would cost an allocation per record"
)]
enum Command {
    Append(AuditRecord, oneshot::Sender<Result<(), AuditError>>),
    Query(
        AuditQuery,
        oneshot::Sender<Result<Vec<AuditRecord>, AuditError>>,
    ),
    Checkpoint(
        time::OffsetDateTime,
        oneshot::Sender<Result<Option<u64>, AuditError>>,
    ),
}

/// What the writer answers each [`Command::Append`] with, once its batch is done.
type CommitAnswer = oneshot::Receiver<Result<(), AuditError>>;

#[derive(Debug, Default)]
struct Stats {
    batches_committed: AtomicU64,
    records_committed: AtomicU64,
    batches_failed: AtomicU64,
    /// When the last batch failed, if it was the last batch.
    failing_since: std::sync::Mutex<Option<Instant>>,
}

impl AuditLog {
    /// Starts the writer thread, which owns `backend` from now on.
    pub fn start(backend: Box<dyn AuditBackend>, cfg: GroupCommitConfig) -> AuditLog {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let (exited_tx, exited_rx) = oneshot::channel();
        let stats = Arc::new(Stats::default());
        let expected = Arc::new(ExpectedCount::default());
        let probe = backend.probe();
        let writer = Writer {
            backend,
            rx,
            max_batch: cfg.max_batch.max(1),
            commit_delay: cfg.commit_delay,
            commit_siblings: cfg.commit_siblings.max(1),
            expected: Arc::clone(&expected),
            stats: Arc::clone(&stats),
            deferred: std::collections::VecDeque::new(),
            _exited: exited_tx,
        };
        let spawned = std::thread::Builder::new()
            .name("meshid-audit-writer".to_owned())
            .spawn(move || writer.run());
        match spawned {
            Ok(handle) => {
                let _ = expected.writer.set(handle.thread().clone());
            }
            Err(e) => {
                // The closure (and with it the receiver) is gone: every call will get
                // `WriterGone`, and the CA will refuse to issue.
                tracing::error!(error = %e, "could not start the audit writer thread");
            }
        }
        AuditLog {
            tx,
            stats,
            expected,
            probe,
            exited: Arc::new(exited_rx),
        }
    }

    /// Announces a record that this caller will pass to [`Expected::record`] soon
    /// (the CA calls it when a request enters the pipeline). While announced records
    /// are on their way, the writer may hold a ready batch back for them, up to
    /// [`GroupCommitConfig::commit_delay`], so that one fsync covers them too.
    pub fn expect(&self) -> Expected<'_> {
        self.expected.pending.fetch_add(1, Ordering::AcqRel);
        Expected {
            log: self,
            counted: true,
        }
    }

    /// Whether the store can take records now: its file is the one opened, and
    /// no commit has failed in the last 10 s without one succeeding since. The
    /// CA's `/readyz` answers 503 while this is an error.
    pub fn healthy(&self) -> Result<(), String> {
        if let Some(probe) = &self.probe {
            probe.check().map_err(|e| e.to_string())?;
        }
        let since = *self
            .stats
            .failing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match since {
            Some(t) if t.elapsed() < UNHEALTHY_AFTER_FAILURE => {
                Err("the last audit commit failed".to_owned())
            }
            _ => Ok(()),
        }
    }

    /// The writer's counters, as a handle that does not keep the log open.
    pub fn stats(&self) -> AuditStats {
        AuditStats(Arc::clone(&self.stats))
    }

    /// Records `rec`, resolving once the transaction holding it has committed.
    ///
    /// Waits for room if the queue is full. If the future is dropped after the record
    /// was queued, the record may still be written: an audit log errs on the side of
    /// recording.
    pub async fn record(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let answer = self.enqueue(rec).await?;
        answer.await.map_err(|_| AuditError::WriterGone)?
    }

    /// Queues `rec` (waiting for room); the receiver resolves once it is committed.
    async fn enqueue(&self, rec: AuditRecord) -> Result<CommitAnswer, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Append(rec, reply))
            .await
            .map_err(|_| AuditError::WriterGone)?;
        Ok(answer)
    }

    /// The records matching `q`, read on the writer thread (so a query sees every
    /// record whose `record` call has resolved). Commits wait while it runs: for
    /// large reads, such as `meshid audit list`, open a separate
    /// [`SqliteBackend::open_read_only`](super::SqliteBackend::open_read_only) instead.
    pub async fn query(&self, q: AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Query(q, reply))
            .await
            .map_err(|_| AuditError::WriterGone)?;
        answer.await.map_err(|_| AuditError::WriterGone)?
    }

    /// Signs a checkpoint of the store's transparency log (after every record
    /// queued before), if it grew since the last; the tree size signed.
    pub async fn checkpoint(&self, now: time::OffsetDateTime) -> Result<Option<u64>, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Checkpoint(now, reply))
            .await
            .map_err(|_| AuditError::WriterGone)?;
        answer.await.map_err(|_| AuditError::WriterGone)?
    }

    /// Drops this handle. If it was the last one, waits until the writer thread has
    /// committed everything queued and exited; otherwise returns at once (the last
    /// handle to go does the flushing).
    pub async fn shutdown(self) {
        let AuditLog {
            tx,
            stats,
            expected,
            probe: _,
            exited,
        } = self;
        drop(tx);
        drop(stats);
        drop(expected);
        if let Some(exited) = Arc::into_inner(exited) {
            // Resolves (with `Err`) when the thread drops its sender, i.e. exits,
            // panics included.
            let _ = exited.await;
        }
    }

    /// How many transactions the writer has committed.
    pub fn batches_committed(&self) -> u64 {
        self.stats.batches_committed.load(Ordering::Relaxed)
    }

    /// How many records the writer has committed.
    pub fn records_committed(&self) -> u64 {
        self.stats.records_committed.load(Ordering::Relaxed)
    }

    /// How many transactions failed (each failing all of its records).
    pub fn batches_failed(&self) -> u64 {
        self.stats.batches_failed.load(Ordering::Relaxed)
    }
}

/// The writer thread's state.
struct Writer {
    backend: Box<dyn AuditBackend>,
    rx: mpsc::Receiver<Command>,
    max_batch: usize,
    commit_delay: Duration,
    commit_siblings: usize,
    expected: Arc<ExpectedCount>,
    stats: Arc<Stats>,
    /// Records of failed batches, to be recorded as refusals once the store
    /// takes writes again ([`withheld`]); at most [`MAX_DEFERRED`].
    deferred: std::collections::VecDeque<AuditRecord>,
    /// Dropped when the thread ends, however it ends: [`AuditLog::shutdown`] waits
    /// for that.
    _exited: oneshot::Sender<()>,
}

/// The most records of failed batches kept for recording later; beyond, the
/// newest are only logged.
const MAX_DEFERRED: usize = 100_000;

/// The record written, once the store is back, for a decision whose batch
/// failed: its caller got `UNAVAILABLE` and no certificate, whatever the
/// decision was, so it is a refusal, saying why and what the decision was.
///
/// A revocation is the exception: it took effect before it was recorded (the
/// certificate is already in the CRLs, and the operator was told its record is
/// not written yet), so it stays a revocation, saying it was recorded late.
fn withheld(rec: &AuditRecord, cause: &str) -> AuditRecord {
    let mut out = rec.clone();
    let was = match (rec.outcome, &rec.reason) {
        (super::Outcome::Issued, _) => "issued".to_owned(),
        (super::Outcome::Refused, Some(reason)) => format!("refused: {reason}"),
        (super::Outcome::Refused, None) => "refused".to_owned(),
        (super::Outcome::Revoked, reason) => {
            out.reason = Some(format!(
                "{}; recorded late: the audit store failed ({cause}) when the revocation took effect",
                reason.as_deref().unwrap_or("revoked")
            ));
            return out;
        }
    };
    out.outcome = super::Outcome::Refused;
    out.reason = Some(format!(
        "withheld: the audit store failed ({cause}), so the caller got UNAVAILABLE and no certificate; \
         recorded once the store came back (the decision was: {was})"
    ));
    out
}

impl Writer {
    fn run(mut self) {
        let mut records = Vec::with_capacity(self.max_batch);
        let mut waiters = Vec::with_capacity(self.max_batch);
        // A query found while draining a batch: handled after that batch commits, so
        // it sees the records queued before it.
        let mut carried: Option<Command> = None;
        loop {
            let first = match carried.take() {
                Some(command) => command,
                // `None` once every handle is gone and the queue is empty.
                None => match self.rx.blocking_recv() {
                    Some(command) => command,
                    None => break,
                },
            };
            match first {
                Command::Query(q, reply) => {
                    let _ = reply.send(self.backend.query(&q));
                }
                Command::Checkpoint(now, reply) => {
                    self.flush_deferred();
                    let _ = reply.send(self.backend.checkpoint(now));
                }
                Command::Append(rec, reply) => {
                    records.push(rec);
                    waiters.push(reply);
                    carried = self.drain(&mut records, &mut waiters);
                    if carried.is_none() && !self.commit_delay.is_zero() {
                        carried = self.wait_for_expected(&mut records, &mut waiters);
                    }
                    self.commit(&mut records, &mut waiters);
                }
            }
        }
        self.flush_deferred();
        if !self.deferred.is_empty() {
            tracing::error!(
                records = self.deferred.len(),
                "audit writer stopping with records of failed batches it could not write; they are lost"
            );
        }
        tracing::debug!("audit writer stopped: every handle is gone and the queue is flushed");
    }

    /// Writes the records of failed batches, as refusals, if the store takes
    /// them now; keeps them otherwise.
    fn flush_deferred(&mut self) {
        while !self.deferred.is_empty() {
            let n = self.deferred.len().min(self.max_batch);
            let batch: Vec<AuditRecord> = self.deferred.iter().take(n).cloned().collect();
            match self.backend.append(&batch) {
                Ok(()) => {
                    self.deferred.drain(..n);
                    self.stats
                        .records_committed
                        .fetch_add(n as u64, Ordering::Relaxed);
                    tracing::warn!(
                        records = n,
                        "audit: decisions of failed batches recorded as withheld refusals"
                    );
                }
                Err(_) => return,
            }
        }
    }

    /// Moves whatever is queued into the batch, up to `max_batch`; returns a query
    /// found on the way (to run after this batch commits).
    fn drain(
        &mut self,
        records: &mut Vec<AuditRecord>,
        waiters: &mut Vec<oneshot::Sender<Result<(), AuditError>>>,
    ) -> Option<Command> {
        while records.len() < self.max_batch {
            match self.rx.try_recv() {
                Ok(Command::Append(rec, reply)) => {
                    records.push(rec);
                    waiters.push(reply);
                }
                Ok(query) => return Some(query),
                Err(_) => return None,
            }
        }
        None
    }

    /// `commit_delay`: while at least `commit_siblings` announced records are on
    /// their way and the batch has room, waits for them (woken by the last one to
    /// arrive), at most `commit_delay` in all, then drains the queue again.
    /// The writer is its own thread, parked against the real clock (fsync is real
    /// time too), hence the std clock.
    #[allow(clippy::disallowed_methods)]
    fn wait_for_expected(
        &mut self,
        records: &mut Vec<AuditRecord>,
        waiters: &mut Vec<oneshot::Sender<Result<(), AuditError>>>,
    ) -> Option<Command> {
        let deadline = Instant::now() + self.commit_delay;
        while records.len() < self.max_batch
            && self.expected.pending.load(Ordering::Acquire) >= self.commit_siblings
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Woken early by the last expected record's arrival; spurious wake-ups
            // just go round the loop.
            std::thread::park_timeout(deadline - now);
        }
        self.drain(records, waiters)
    }

    /// Writes a batch and answers its waiters.
    #[allow(clippy::disallowed_methods)] // `failing_since`: real time, on the writer thread.
    fn commit(
        &mut self,
        records: &mut Vec<AuditRecord>,
        waiters: &mut Vec<oneshot::Sender<Result<(), AuditError>>>,
    ) {
        let batch_len = records.len();
        match self.backend.append(records) {
            Ok(()) => {
                *self
                    .stats
                    .failing_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                self.stats.batches_committed.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .records_committed
                    .fetch_add(batch_len as u64, Ordering::Relaxed);
                for waiter in waiters.drain(..) {
                    // The caller may have given up waiting; its record is stored anyway.
                    let _ = waiter.send(Ok(()));
                }
                self.flush_deferred();
            }
            Err(e) => {
                *self
                    .stats
                    .failing_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                self.stats.batches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %error_chain(&e),
                    batch_len,
                    "audit batch not committed; its requests get no certificate"
                );
                let cause = error_chain(&e);
                for rec in records.iter() {
                    if self.deferred.len() < MAX_DEFERRED {
                        self.deferred.push_back(withheld(rec, &cause));
                    } else {
                        tracing::error!(record = ?rec, "audit: too many records of failed batches kept; this one is only logged");
                    }
                }
                let source = Arc::new(e);
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(Err(AuditError::CommitFailed {
                        batch_len,
                        source: Arc::clone(&source),
                    }));
                }
            }
        }
        records.clear();
    }
}

/// `e: cause: cause…`, so a message or log line names the root cause (the
/// SQLite or PostgreSQL error).
pub(crate) fn error_chain(e: &AuditError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests;
