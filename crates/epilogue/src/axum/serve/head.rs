//! The header read timeout, kept outside hyper: hyper's own costs 1,800
//! instructions a request more (3.7 % of the demo's `POST
//! /response/single`, `bench/profile.sh`; see bench/README.md).
//!
//! hyper's (`http1::Builder::header_read_timeout`) gives every keep-alive
//! request a new boxed tokio timer, registered and dropped again, and runs
//! its dispatch loop once more after every head, reading the socket again,
//! only to start that timer. hyper-util's `auto` connection adds no timeout
//! of its own to the wait for the bytes that tell HTTP/1 from HTTP/2.
//!
//! Here the connection's service marks the connection busy when it is
//! called (a request's head is in), and, over HTTP/1, the response body
//! marks it idle again when hyper drops it (sent, or abandoned). The
//! connection task waits on one tokio timer, moved only when it fires
//! before the latest deadline (about once per timeout period, not once per
//! request), and drops the connection, closing it as hyper does on its
//! timeout, once the deadline passes while it is idle.
//!
//! So a client has the timeout from the moment the connection is accepted,
//! or its previous response is done, to the moment its next head is in.
//! An HTTP/2 connection is busy from its first request on: it is pinged
//! instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// Farther than any timeout: where `Instant + duration` would overflow,
/// the deadline is `now + FAR` instead (tokio's own far future).
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Whether an HTTP/1 connection waits for a request head, and since which
/// response.
///
/// It reads no clock: [`HeadTimeout`], polled right after the connection,
/// reads it when it sees a response more, which spares the conversions
/// between `Instant`s and numbers that storing one in an atomic would take.
#[derive(Debug, Default)]
pub(super) struct HeadClock {
    busy: AtomicBool,
    /// Responses done so far.
    responses: AtomicU64,
}

impl HeadClock {
    /// A request head is in: no deadline until its response is done.
    pub(super) fn busy(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }

    /// The response is done: the next head is awaited from now.
    pub(super) fn idle(&self) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
    }
}

/// Completes when the connection has been idle for `timeout`.
///
/// It must be polled by the connection's task, after the connection each
/// time: the connection turns busy and idle only while it is polled, so
/// this future sees every change without being woken for it, and the one
/// timer wakes only the waker it was last polled with.
pub(super) struct HeadTimeout {
    clock: Arc<HeadClock>,
    timeout: Duration,
    /// The responses done when the deadline was computed.
    seen: u64,
    deadline: Instant,
    /// Armed at `deadline` or before.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The waker `timer` was last polled with, until it fires or moves
    /// earlier: while it is there the timer will wake it, so a poll with
    /// the same waker need not poll the timer again (tokio's poll swaps the
    /// registered waker for a clone of the new one every time).
    waker: Option<Waker>,
}

impl HeadTimeout {
    /// The timeout of a connection accepted at `accepted`.
    pub(super) fn new(clock: Arc<HeadClock>, accepted: Instant, timeout: Duration) -> Self {
        let deadline = after(accepted, timeout);
        Self {
            clock,
            timeout,
            seen: 0,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            waker: None,
        }
    }
}

/// `at + duration`, or far in the future if that overflows.
fn after(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration).unwrap_or_else(|| at + FAR)
}

impl Future for HeadTimeout {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.clock.busy.load(Ordering::Relaxed) {
            // A request in flight: no head is awaited. The timer may fire
            // meanwhile; it is looked at again once the connection is idle.
            return Poll::Pending;
        }
        let responses = this.clock.responses.load(Ordering::Relaxed);
        if responses != this.seen {
            this.seen = responses;
            this.deadline = after(Instant::now(), this.timeout);
            // Deadlines only move later: the timer, armed earlier, is moved
            // when it fires. (Earlier only if the clock went back.)
            if this.deadline < this.timer.deadline() {
                this.timer.as_mut().reset(this.deadline);
                this.waker = None;
            }
        }
        if this
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
            && !this.timer.is_elapsed()
        {
            return Poll::Pending;
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                this.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            this.waker = None;
            if this.timer.deadline() >= this.deadline {
                return Poll::Ready(());
            }
            // Armed for an earlier deadline: move it to this one.
            let deadline = this.deadline;
            this.timer.as_mut().reset(deadline);
        }
    }
}

pin_project! {
    /// A response body that marks its connection idle when dropped: hyper
    /// drops it once it is sent in full, or abandoned.
    pub(super) struct MarkIdle<B> {
        #[pin]
        inner: B,
        clock: Option<Arc<HeadClock>>,
    }

    impl<B> PinnedDrop for MarkIdle<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(clock) = this.project().clock.take() {
                clock.idle();
            }
        }
    }
}

impl<B> MarkIdle<B> {
    /// `inner`, marking `clock`'s connection idle when dropped (`None`:
    /// no clock, HTTP/2 or no timeout).
    pub(super) fn new(inner: B, clock: Option<Arc<HeadClock>>) -> Self {
        Self { inner, clock }
    }
}

impl<B: Body> Body for MarkIdle<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn timed_out(timeout: &mut HeadTimeout) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *timeout).poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_from_its_last_response() {
        let clock = Arc::new(HeadClock::default());
        let start = Instant::now();
        let mut timeout = HeadTimeout::new(clock.clone(), start, Duration::from_secs(10));
        assert!(!timed_out(&mut timeout).await);
        // A request at +4 s, answered at +6 s: the timer armed for +10 s
        // fires, and waits on until +16 s.
        tokio::time::advance(Duration::from_secs(4)).await;
        clock.busy();
        assert!(!timed_out(&mut timeout).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        clock.idle();
        (&mut timeout).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_never_times_out() {
        let clock = Arc::new(HeadClock::default());
        let mut timeout = HeadTimeout::new(clock.clone(), Instant::now(), Duration::from_secs(10));
        clock.busy();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!timed_out(&mut timeout).await);
        // Idle again: the whole timeout from then.
        clock.idle();
        assert!(!timed_out(&mut timeout).await);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!timed_out(&mut timeout).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(timed_out(&mut timeout).await);
    }

    #[tokio::test(start_paused = true)]
    async fn durations_too_long_for_instant_never_panic() {
        let clock = Arc::new(HeadClock::default());
        let mut timeout = HeadTimeout::new(clock.clone(), Instant::now(), Duration::MAX);
        assert!(!timed_out(&mut timeout).await);
        clock.busy();
        clock.idle();
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(!timed_out(&mut timeout).await);
    }
}
