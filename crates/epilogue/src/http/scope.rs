//! What one request shares between the executing layer and what runs inside
//! it (route-level layers, the extractor): its place in the runner and the
//! tasks its handler added through the extractor.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::Span;

use crate::runner::{Refused, Reservation, Runner};
use crate::tasks::{BackgroundTasks, Deliver};

/// Put in the request's extensions by [`Background`](super::Background).
#[derive(Clone)]
pub(crate) struct Scope(Arc<Shared>);

struct Shared {
    runner: Runner,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    reservation: Option<Reservation>,
    tasks: BackgroundTasks,
    /// The span current where the request was admitted: inside the service's
    /// own tracing layers, so tasks can follow from the request's span.
    span: Option<Span>,
    /// The response was produced: what comes later starts at once.
    finished: bool,
}

impl Scope {
    pub(crate) fn new(runner: Runner) -> Self {
        Self(Arc::new(Shared {
            runner,
            state: Mutex::new(State::default()),
        }))
    }

    pub(crate) fn runner(&self) -> &Runner {
        &self.0.runner
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held leaves nothing half-written.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes this request's place in the runner, once however many route
    /// layers and extractors ask.
    pub(crate) fn admit(&self) -> Result<(), Refused> {
        let mut state = self.state();
        if state.reservation.is_none() {
            state.reservation = Some(self.0.runner.reserve()?);
            if tracing::enabled!(tracing::Level::DEBUG) {
                state.span = Some(Span::current());
            }
        }
        Ok(())
    }

    /// Where an extracted group delivers its tasks when the handler drops it.
    pub(crate) fn sink(&self) -> Arc<dyn Deliver> {
        self.0.clone()
    }

    /// Called once the response is there: the place and the extractor's tasks.
    pub(crate) fn finish(&self) -> (Option<Reservation>, BackgroundTasks, Span) {
        let mut state = self.state();
        state.finished = true;
        (
            state.reservation.take(),
            state.tasks.take(),
            state.span.take().unwrap_or_else(Span::none),
        )
    }
}

impl Deliver for Shared {
    fn deliver(&self, tasks: BackgroundTasks) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.finished {
            // The handler kept its group past its response (moved it into a
            // spawned task, say): the tasks were still promised, so run them.
            drop(state);
            tracing::debug!("background tasks delivered after their response; starting them now");
            self.runner.defer_over_limit(tasks, &Span::none()).start();
        } else {
            state.tasks.merge(tasks);
        }
    }
}
