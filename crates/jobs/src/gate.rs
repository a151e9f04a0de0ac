//! [`Gate`]: a semaphore that also remembers the most holders it ever had at once, so that
//! tests (and `/metrics` readers) can see that a cap held.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::{Semaphore, SemaphorePermit};

/// At most `n` holders at a time; the others wait.
#[derive(Debug)]
pub struct Gate {
    slots: Semaphore,
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// One holder of a [`Gate`]; leaving frees the slot.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
    _permit: SemaphorePermit<'a>,
}

impl Gate {
    pub fn new(n: usize) -> Gate {
        Gate {
            slots: Semaphore::new(n.max(1)),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Waits for a slot.
    pub async fn enter(&self) -> Pass<'_> {
        let permit = self
            .slots
            .acquire()
            .await
            .expect("the gate is never closed");
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        Pass {
            gate: self,
            _permit: permit,
        }
    }

    /// The most holders there were at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(SeqCst)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.running.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_holders_and_caps_them() {
        let g = Gate::new(2);
        let a = g.enter().await;
        let b = g.enter().await;
        assert_eq!(g.peak(), 2);
        // A third waits until one leaves.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), g.enter())
                .await
                .is_err()
        );
        drop(a);
        let _c = g.enter().await;
        drop(b);
        assert_eq!(g.peak(), 2);
    }
}
