//! Buffers that follow traffic: a connection holds a buffer only while
//! bytes are in flight through it, and gives it back the moment they are
//! written on; an idle connection, or one still in its handshake, holds
//! none.
//!
//! Buffers come from a small pool per thread (no lock: the proxy's tasks
//! run on one or a few worker threads), in two sizes: [`SMALL`] for
//! interactive traffic and [`LARGE`] once a read fills a whole small buffer
//! (bulk). Each pool keeps at most [`KEEP`] buffers of each size; more are
//! freed. [`release_pools`] empties the pools (every thread's, at its next
//! use) so that memory freed after a burst of connections can go back to
//! the system (see [`memory`](crate::proxy::memory)).
//!
//! Rule enforced (SECURITY.md, "What an unauthenticated client can hold"):
//! no buffer is taken for a connection before it has bytes to move, so a
//! client that connects and sends nothing, or stalls in its handshake,
//! costs no copy or read buffer.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a buffer for interactive traffic.
pub const SMALL: usize = 16 * 1024;

/// Bytes of a buffer for bulk traffic: several whole TLS records (16 KiB)
/// per read and per write.
pub const LARGE: usize = 64 * 1024;

/// Buffers of each size a thread keeps for reuse.
pub const KEEP: usize = 16;

/// Bumped by [`release_pools`]: a pool filled under an older epoch is
/// emptied before its next use.
static EPOCH: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Pool {
    epoch: u64,
    small: Vec<Box<[u8]>>,
    large: Vec<Box<[u8]>>,
}

impl Pool {
    /// The pool, emptied first if [`release_pools`] ran since it was filled.
    fn current(&mut self) -> &mut Self {
        let epoch = EPOCH.load(Ordering::Relaxed);
        if self.epoch != epoch {
            self.small = Vec::new();
            self.large = Vec::new();
            self.epoch = epoch;
        }
        self
    }

    fn shelf(&mut self, size: usize) -> &mut Vec<Box<[u8]>> {
        if size == LARGE {
            &mut self.large
        } else {
            &mut self.small
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
    /// Buffers taken on this thread and not yet dropped.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A buffer of [`SMALL`] or [`LARGE`] bytes, back to its thread's pool
/// when dropped.
pub struct Buf {
    bytes: Option<Box<[u8]>>,
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf").field("len", &self.len()).finish()
    }
}

impl Buf {
    /// A buffer for bulk traffic when `bulk`, else a small one.
    pub fn take(bulk: bool) -> Self {
        let size = if bulk { LARGE } else { SMALL };
        let pooled = POOL.with(|pool| pool.borrow_mut().current().shelf(size).pop());
        HELD.with(|held| held.set(held.get() + 1));
        Self {
            bytes: Some(pooled.unwrap_or_else(|| vec![0; size].into_boxed_slice())),
        }
    }

    /// Whether this is a bulk ([`LARGE`]) buffer.
    pub fn is_large(&self) -> bool {
        self.len() == LARGE
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let Some(bytes) = self.bytes.take() else {
            return;
        };
        let _ = HELD.try_with(|held| held.set(held.get().saturating_sub(1)));
        // A thread being torn down has no pool left: the buffer is freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let shelf = pool.current().shelf(bytes.len());
            if shelf.len() < KEEP {
                shelf.push(bytes);
            }
        });
    }
}

/// Empties every thread's pool: this thread's now, the others' at their
/// next use.
pub fn release_pools() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
    let _ = POOL.try_with(|pool| {
        pool.borrow_mut().current();
    });
}

/// Buffers taken on this thread and still held (tests).
pub fn held_here() -> usize {
    HELD.with(std::cell::Cell::get)
}

/// Buffers this thread's pool holds now (tests).
pub fn pooled_here() -> usize {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = pool.current();
        pool.small.len() + pool.large.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `release_pools` empties every thread's pool: tests that count pooled
    /// buffers take turns.
    static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn counting() -> std::sync::MutexGuard<'static, ()> {
        COUNTING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn a_dropped_buffer_is_reused_by_the_next_take() {
        let _turn = counting();
        std::thread::spawn(|| {
            let first = Buf::take(false);
            let addr = first.as_ptr();
            drop(first);
            assert_eq!(pooled_here(), 1);
            let second = Buf::take(false);
            assert_eq!(second.as_ptr(), addr, "the pooled buffer was not reused");
            assert_eq!(second.len(), SMALL);
            assert!(Buf::take(true).is_large());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_pool_keeps_at_most_keep_buffers_of_a_size() {
        let _turn = counting();
        std::thread::spawn(|| {
            let many: Vec<Buf> = (0..KEEP + 5).map(|_| Buf::take(true)).collect();
            drop(many);
            assert_eq!(pooled_here(), KEEP);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn release_empties_the_pool() {
        let _turn = counting();
        std::thread::spawn(|| {
            drop(Buf::take(false));
            drop(Buf::take(true));
            assert_eq!(pooled_here(), 2);
            release_pools();
            assert_eq!(pooled_here(), 0);
        })
        .join()
        .unwrap();
    }
}
