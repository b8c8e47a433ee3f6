//! Admission control: at most `max_in_flight` requests at Ollama, a bounded
//! FIFO queue of `max_queue` behind them, and an immediate refusal beyond.
//!
//! It lives in the proxy because Ollama queues requests for a loaded model
//! without bound (`OLLAMA_MAX_QUEUE` only bounds requests waiting for a
//! load), and Cloud Run's autoscaler should see the queue, not Ollama.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Admission {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    max_queue: usize,
    waiting: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
}

/// The queue is full: answer 429.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// A slot at Ollama, held until the response body is finished or dropped.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements the queue length however the wait ends, including when the
/// client goes away and the waiting future is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max_in_flight: usize, max_queue: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            max_queue,
            waiting: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a slot in arrival order; returns the permit and the time spent queued.
    pub async fn admit(&self) -> Result<(Permit, Duration), QueueFull> {
        let start = Instant::now();
        // tokio's semaphore hands permits to queued waiters first, so this
        // fast path never overtakes a request that is already waiting.
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok((self.permit(slot), Duration::ZERO));
        }
        let reserved = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_queue).then_some(w + 1)
            });
        if reserved.is_err() {
            return Err(QueueFull);
        }
        let _waiting = Waiting(&self.waiting);
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueFull)?;
        Ok((self.permit(slot), start.elapsed()))
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> Permit {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Permit {
            _slot: slot,
            in_flight: self.in_flight.clone(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_is_bounded_and_fifo() {
        let adm = Arc::new(Admission::new(1, 2));
        let (first, _) = adm.admit().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (adm, order) = (adm.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let (p, waited) = adm.admit().await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
                waited
            }));
            // Let each waiter enqueue before the next, to pin the arrival order.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(adm.queued(), 2);
        assert_eq!(
            adm.admit().await.err(),
            Some(QueueFull),
            "third waiter must be refused"
        );
        drop(first);
        for w in waiters {
            assert!(w.await.unwrap() >= Duration::from_millis(10));
        }
        assert_eq!(*order.lock().unwrap(), [0, 1]);
        assert_eq!((adm.in_flight(), adm.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let adm = Arc::new(Admission::new(1, 1));
        let (held, _) = adm.admit().await.unwrap();
        let adm2 = adm.clone();
        let waiter = tokio::spawn(async move { adm2.admit().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(adm.queued(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(
            adm.queued(),
            0,
            "an abandoned wait must free its queue place"
        );
        drop(held);
        assert!(adm.admit().await.is_ok());
    }
}
