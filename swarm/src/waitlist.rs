//! Drives core's [`UploadQueue`] for the serving tasks: each inbound chunk request waits here for
//! its answer (at once, or when a slot frees or a resend window ends, at most `max_wait`), and a
//! timer task polls the queue at its deadlines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use preheat_core::upload::{Answer, UploadConfig, UploadQueue};
use preheat_core::Digest;
use tokio::sync::{oneshot, Notify};

#[derive(Debug)]
struct State {
    queue: UploadQueue<Digest, u64>,
    next_id: u64,
    /// Serving tasks waiting for their answer, with what they asked for.
    waiters: HashMap<u64, (Digest, u32, oneshot::Sender<Answer>)>,
    /// What the timer task sleeps until (`None`: until notified).
    timer_at: Option<Instant>,
}

/// Upload slots, super-seeding and waiting requests of this node.
#[derive(Debug)]
pub(crate) struct Waitlist {
    state: Mutex<State>,
    /// The queue's next deadline may have moved earlier.
    changed: Notify,
}

impl Waitlist {
    pub fn new(cfg: UploadConfig) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: UploadQueue::new(cfg),
                next_id: 0,
                waiters: HashMap::new(),
                timer_at: None,
            }),
            changed: Notify::new(),
        })
    }

    /// The answer to a request for `chunk` of `blob`. `Serve` holds a slot: give it back with
    /// [`Waitlist::finished`]. Dropping the future while it waits withdraws the request.
    pub async fn admit(&self, blob: Digest, chunk: u32) -> Answer {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.lock();
            let id = st.next_id;
            st.next_id += 1;
            st.waiters.insert(id, (blob, chunk, tx));
            st.queue.request(id, blob, chunk, Instant::now());
            id
        };
        self.poll();
        let mut w = Withdraw {
            list: self,
            id,
            blob,
            chunk,
            rx,
            done: false,
        };
        let answer = (&mut w.rx).await.unwrap_or(Answer::Busy);
        w.done = true;
        answer
    }

    /// An upload `admit` answered `Serve` has ended, however it ended.
    pub fn finished(&self, blob: Digest, chunk: u32) {
        self.lock().queue.finished(blob, chunk);
        self.poll();
    }

    /// Polls the queue at its deadlines until the node stops (the task is aborted).
    pub async fn run_timer(self: Arc<Self>) {
        loop {
            let next = {
                let mut st = self.lock();
                st.timer_at = st.queue.next_deadline();
                st.timer_at
            };
            match next {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => self.poll(),
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Hands the queue's answers to their waiters; an answer `Serve` nobody takes any more
    /// (its task was dropped) gives the slot back at once.
    fn poll(&self) {
        let mut st = self.lock();
        loop {
            let answers = st.queue.poll(Instant::now());
            if answers.is_empty() {
                break;
            }
            for (id, a) in answers {
                let Some((blob, chunk, tx)) = st.waiters.remove(&id) else {
                    continue;
                };
                if tx.send(a).is_err() && a == Answer::Serve {
                    st.queue.finished(blob, chunk);
                }
            }
        }
        let next = st.queue.next_deadline();
        let earlier = next.is_some_and(|n| st.timer_at.is_none_or(|t| n < t));
        drop(st);
        if earlier {
            self.changed.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Each holder makes one small consistent update, so a panic leaves the state usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Withdraws a request whose serving task stopped waiting (stream closed, timeout, shutdown).
struct Withdraw<'a> {
    list: &'a Waitlist,
    id: u64,
    blob: Digest,
    chunk: u32,
    rx: oneshot::Receiver<Answer>,
    done: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        {
            let mut st = self.list.lock();
            st.queue.cancel(&self.id);
            st.waiters.remove(&self.id);
        }
        // Answered between the last poll and this drop: a granted slot goes back.
        if self.rx.try_recv() == Ok(Answer::Serve) {
            self.list.finished(self.blob, self.chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn list(wait_ms: u64) -> Arc<Waitlist> {
        Waitlist::new(UploadConfig {
            max_uploads: 1,
            resend_after: Duration::ZERO,
            max_wait: Duration::from_millis(wait_ms),
            max_waiting: 4,
        })
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_slot_when_it_frees() {
        let w = list(10_000);
        let d = Digest::of(b"blob");
        assert_eq!(w.admit(d, 0).await, Answer::Serve);
        let second = tokio::spawn({
            let w = w.clone();
            async move { w.admit(d, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        w.finished(d, 0);
        assert_eq!(second.await.unwrap(), Answer::Serve);
    }

    #[tokio::test]
    async fn the_timer_ends_a_wait_with_busy() {
        let w = list(200);
        let timer = tokio::spawn(w.clone().run_timer());
        let d = Digest::of(b"blob");
        assert_eq!(w.admit(d, 0).await, Answer::Serve);
        let t0 = tokio::time::Instant::now();
        assert_eq!(w.admit(d, 1).await, Answer::Busy);
        assert!(t0.elapsed() >= Duration::from_millis(200));
        timer.abort();
    }

    #[tokio::test]
    async fn a_withdrawn_request_neither_waits_nor_keeps_a_slot() {
        let w = list(10_000);
        let d = Digest::of(b"blob");
        assert_eq!(w.admit(d, 0).await, Answer::Serve);
        // The asker goes away while waiting.
        let gone = tokio::time::timeout(Duration::from_millis(10), w.admit(d, 1)).await;
        assert!(gone.is_err());
        assert_eq!(w.lock().queue.waiting(), 0);
        w.finished(d, 0);
        assert_eq!(w.lock().queue.active(), 0);
        assert_eq!(w.admit(d, 2).await, Answer::Serve);
    }
}
