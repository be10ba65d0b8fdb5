//! The run queue of `nestr serve`: at most `max_runs` runs execute at once (each holds a
//! [`Slot`]); up to `max_queued` more wait, recorded `queued`, and begin in the order they were
//! recorded as slots free; a run beyond both is refused before anything is recorded (503 with
//! `Retry-After`). Admission and recording happen under one lock, so the order of the queue is
//! the order of the store's rows, from which a queued run's position is read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::state::lock;

/// Bounds of the queue.
#[derive(Debug)]
pub struct RunQueue {
    max_runs: usize,
    max_queued: usize,
    inner: Mutex<Waiting>,
}

#[derive(Debug, Default)]
pub struct Waiting {
    /// Slots held now.
    running: usize,
    /// Runs waiting for a slot, oldest first.
    queue: VecDeque<(String, oneshot::Sender<Slot>)>,
}

/// The right to execute one run; given to the next waiting run when dropped.
#[derive(Debug)]
pub struct Slot(Arc<RunQueue>);

/// What a new run gets.
pub enum Admission {
    /// A slot: it begins at once.
    Now(Slot),
    /// A place in the queue: the slot arrives when one frees.
    Wait(oneshot::Receiver<Slot>),
}

/// The queue is full.
#[derive(Debug)]
pub struct Full {
    pub max_runs: usize,
    pub max_queued: usize,
}

impl RunQueue {
    pub fn new(max_runs: usize, max_queued: usize) -> Arc<RunQueue> {
        Arc::new(RunQueue {
            max_runs: max_runs.max(1),
            max_queued,
            inner: Mutex::new(Waiting::default()),
        })
    }

    /// Held while a run is admitted and recorded (see the module doc).
    pub fn lock(&self) -> MutexGuard<'_, Waiting> {
        lock(&self.inner)
    }

    /// Admits run `run_id`: a slot if one is free, else a place in the queue, else [`Full`].
    pub fn admit(self: &Arc<Self>, w: &mut Waiting, run_id: &str) -> Result<Admission, Full> {
        if w.running < self.max_runs {
            w.running += 1;
            return Ok(Admission::Now(Slot(self.clone())));
        }
        if w.queue.len() >= self.max_queued {
            return Err(Full {
                max_runs: self.max_runs,
                max_queued: self.max_queued,
            });
        }
        let (tx, rx) = oneshot::channel();
        w.queue.push_back((run_id.to_string(), tx));
        w.publish();
        Ok(Admission::Wait(rx))
    }

    /// Takes run `run_id` out of the queue (it was not recorded, or it was cancelled).
    pub fn withdraw(&self, w: &mut Waiting, run_id: &str) {
        w.queue.retain(|(id, _)| id != run_id);
        w.publish();
    }

    /// Runs executing now and runs waiting.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let w = self.lock();
        (w.running, w.queue.len())
    }
}

impl Waiting {
    /// `nestr_runs_queued`.
    fn publish(&self) {
        if let Some(m) = crate::metrics::global() {
            m.runs_queued
                .set(i64::try_from(self.queue.len()).unwrap_or(i64::MAX));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let queue = self.0.clone();
        // Hand the slot to the oldest waiting run; one whose waiter is gone hands it on in turn
        // (its `Slot` is dropped by the failed send, outside the lock).
        let next = {
            let mut w = queue.lock();
            let next = w.queue.pop_front();
            w.publish();
            match next {
                Some((_, tx)) => Some(tx),
                None => {
                    w.running = w.running.saturating_sub(1);
                    None
                }
            }
        };
        if let Some(tx) = next {
            let _ = tx.send(Slot(queue));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_and_handed_on_in_order() {
        let q = RunQueue::new(1, 2);
        let a = q.admit(&mut q.lock(), "a").ok();
        let Some(Admission::Now(a)) = a else {
            panic!("the first run gets a slot")
        };
        let Ok(Admission::Wait(b)) = q.admit(&mut q.lock(), "b") else {
            panic!("the second waits")
        };
        let Ok(Admission::Wait(c)) = q.admit(&mut q.lock(), "c") else {
            panic!("the third waits")
        };
        assert!(
            q.admit(&mut q.lock(), "d").is_err(),
            "the fourth is refused"
        );
        assert_eq!(q.counts(), (1, 2));
        // c's waiter goes away without withdrawing: b is next, c's place hands the slot on,
        // and then the slot goes back.
        drop(c);
        drop(a);
        let b = b.await.expect("b gets the slot");
        assert_eq!(q.counts(), (1, 1));
        drop(b);
        assert_eq!(q.counts(), (0, 0));
        let Ok(Admission::Now(_e)) = q.admit(&mut q.lock(), "e") else {
            panic!("a free slot is given at once")
        };
    }
}
