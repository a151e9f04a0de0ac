//! Admission of `POST /v1/stylize`: `max_concurrent` run, a few more wait in a short queue
//! (two users pressing the button at once both get their image), and a request answers
//! `429 overloaded` only when its expected wait is longer than `max_stylize_wait_s`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The stylize slots and the queue in front of them.
pub struct Admission {
    permits: Arc<Semaphore>,
    slots: usize,
    waiting: AtomicUsize,
    /// Recent stylize time in seconds (exponentially weighted), as `f64` bits.
    recent_s: AtomicU64,
    max_wait: Duration,
}

/// Why a request was not admitted: try again after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: u32,
}

impl Admission {
    pub fn new(slots: usize, max_wait_s: f64) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(slots.max(1))),
            slots: slots.max(1),
            waiting: AtomicUsize::new(0),
            recent_s: AtomicU64::new(1.0f64.to_bits()),
            max_wait: Duration::from_secs_f64(max_wait_s.max(0.0)),
        }
    }

    /// The semaphore itself (tests hold its permits to fill the server).
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// How long a stylize takes lately.
    pub fn recent_seconds(&self) -> f64 {
        f64::from_bits(self.recent_s.load(SeqCst))
    }

    /// Records how long one stylize took.
    pub fn observe(&self, seconds: f64) {
        let old = self.recent_seconds();
        let new = 0.7 * old + 0.3 * seconds.max(0.0);
        self.recent_s.store(new.to_bits(), SeqCst);
    }

    /// A slot now, or after a short wait; `Busy` when the wait would be long.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let ahead = self.waiting.load(SeqCst) + 1;
        // Each slot frees after about one stylize; those ahead go first.
        let expected = self.recent_seconds() * (ahead as f64 / self.slots as f64).ceil();
        let busy = Busy {
            retry_after: expected.ceil().clamp(1.0, 60.0) as u32,
        };
        if self.max_wait.is_zero() || expected > self.max_wait.as_secs_f64() {
            return Err(busy);
        }
        // Counted while waiting, also when the client goes away mid-wait (the future is
        // dropped): the guard gives the place back.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.waiting.fetch_add(1, SeqCst);
        let _place = Waiting(&self.waiting);
        let got = tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await;
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_briefly_then_refuses() {
        let a = Arc::new(Admission::new(1, 5.0));
        a.observe(0.1);
        let first = a.enter().await.unwrap();
        // The second waits for the first (expected ~0.1 s) …
        let a2 = a.clone();
        let second = tokio::spawn(async move { a2.enter().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()));
        // … but not when recent stylizes say the wait would be long.
        let held = a.enter().await.unwrap();
        for _ in 0..20 {
            a.observe(30.0);
        }
        let busy = a.enter().await.unwrap_err();
        assert!(busy.retry_after >= 6, "{busy:?}");
        drop(held);
        // Never waiting: refused at once while full.
        let none = Admission::new(1, 0.0);
        let _p = none.enter().await.unwrap();
        assert_eq!(none.enter().await.unwrap_err().retry_after, 1);
        // A waiter whose client went away gives its place back.
        let b = Arc::new(Admission::new(1, 5.0));
        b.observe(0.1);
        let held = b.enter().await.unwrap();
        let b2 = b.clone();
        let gone = tokio::spawn(async move { b2.enter().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.waiting.load(SeqCst), 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(b.waiting.load(SeqCst), 0);
        drop(held);
    }
}
