//! The timer behind the HTTP/1 header-read timeout: one armed tokio timer
//! per connection, shared by all its requests.
//!
//! hyper drops its header-read sleep once a request head is parsed and asks
//! the timer for a new one when it waits for the next head, so with
//! hyper-util's `TokioTimer` every keep-alive request registered a tokio
//! timer and deregistered it a moment later (wheel insertion and removal,
//! clock arithmetic). Here a sleep only records its deadline; the
//! connection's one `tokio::time::Sleep` stays armed where it is, and is
//! moved later only when it fires before the latest deadline, which, as
//! requests come, happens about once per timeout period rather than once
//! per request; and a sleep polled again by the task the timer will wake
//! anyway does not poll the timer again. Measured with
//! `bench/profile.sh 1000`, the demo's instructions per request went from
//! 45,007 (`TokioTimer`) to 44,811 with the shared timer alone, and to
//! 44,392 without the repeated polls: about 600 in all.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// Farther than any timeout: where `Instant + duration` would overflow,
/// the sleep ends at `now + FAR` instead (tokio's own far future).
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A `hyper::rt::Timer` for one connection, whose sleeps share one tokio
/// timer.
///
/// Its sleeps must all be polled by one task (the connection's): the
/// shared timer wakes only the waker it was last polled with. hyper's
/// HTTP/1 connection has one sleep at a time, the header-read one.
#[derive(Clone, Default)]
pub(super) struct ConnectionTimer {
    armed: Arc<Mutex<Armed>>,
}

/// The connection's tokio timer, created by the first poll of a sleep.
#[derive(Default)]
struct Armed {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker `timer` was last polled with, until it fires or moves
    /// earlier: while it is there the timer will wake it, so a sleep polled
    /// with the same waker need not poll the timer again (tokio's poll
    /// swaps the registered waker for a clone of the new one every time).
    waker: Option<Waker>,
}

impl ConnectionTimer {
    fn sleep_at(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnectionSleep {
            armed: self.armed.clone(),
            deadline,
        })
    }
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_at(after(Instant::now(), duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_at(Instant::from_std(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnectionSleep>() {
            Some(sleep) => sleep.get_mut().deadline = Instant::from_std(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    // tokio's clock, which tests can pause, as `TokioTimer` has it.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// `now + duration`, or far in the future if that overflows.
fn after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration).unwrap_or_else(|| now + FAR)
}

/// A sleep of a [`ConnectionTimer`]: its deadline, and the shared timer.
struct ConnectionSleep {
    armed: Arc<Mutex<Armed>>,
    deadline: Instant,
}

impl Future for ConnectionSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // Nothing panics while the lock is held but tokio's timer itself.
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let Armed { timer, waker } = &mut *armed;
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Deadlines normally only move later; an earlier one (a `reset`
        // back) must not wait for a later timer.
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
            *waker = None;
        }
        if waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
            && !timer.is_elapsed()
        {
            return Poll::Pending;
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                *waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            *waker = None;
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Armed for an earlier request's deadline: move it to ours.
            timer.as_mut().reset(deadline);
        }
    }
}

impl hyper::rt::Sleep for ConnectionSleep {}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use hyper::rt::Timer;

    use super::*;

    /// Polls `sleep` once: whether it is over.
    async fn over(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_ends_at_its_deadline_even_when_the_timer_was_armed_earlier() {
        let timer = ConnectionTimer::default();
        let start = Instant::now();
        // The first request's sleep arms the shared timer at +10 s...
        let mut first = timer.sleep_until((start + Duration::from_secs(10)).into_std());
        assert!(!over(&mut first).await);
        drop(first);
        // ...the next one's deadline is later: it fires then, not before.
        tokio::time::advance(Duration::from_secs(5)).await;
        let second = timer.sleep(Duration::from_secs(10));
        second.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_rearms_the_timer() {
        let timer = ConnectionTimer::default();
        let start = Instant::now();
        let mut late = timer.sleep(Duration::from_secs(30));
        assert!(!over(&mut late).await);
        drop(late);
        timer.sleep(Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_a_sleep() {
        let timer = ConnectionTimer::default();
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(5));
        assert!(!over(&mut sleep).await);
        timer.reset(&mut sleep, (start + Duration::from_secs(20)).into_std());
        sleep.as_mut().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(20));
        timer.reset(&mut sleep, (start + Duration::from_secs(25)).into_std());
        sleep.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn durations_too_long_for_instant_never_panic() {
        let timer = ConnectionTimer::default();
        let mut sleep = timer.sleep(Duration::MAX);
        assert!(!over(&mut sleep).await);
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(!over(&mut sleep).await);
    }
}
