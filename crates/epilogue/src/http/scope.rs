//! What one request shares between the executing layer and what runs inside
//! it (route-level layers, the extractor, response parts): its place in the
//! runner and the tasks gathered for it.
//!
//! The scope belongs to the request's [`ResponseFuture`](super::ResponseFuture)
//! and is lent to the thread for as long as the inner service is called or
//! polled: everything inside finds it there without a lookup in the request's
//! extensions, an `Arc` or a lock. Code that runs elsewhere (a task spawned
//! by the handler, a `tower::buffer` worker) does not see it and falls back
//! on the response's extensions or on the runner itself.

use std::cell::RefCell;

use http::Extensions;
use scoped_tls::scoped_thread_local;
use tracing::Span;

use crate::runner::{Deferred, Refused, Reservation, Runner};
use crate::tasks::{BackgroundTasks, Deliver};

// A pointer to the lent scope, not the scope itself: lending costs no copy
// of it, however often the service is polled.
scoped_thread_local!(static CURRENT: RefCell<Scope>);

/// One request's place in the runner and its tasks, by origin.
pub(crate) struct Scope {
    runner: Runner,
    reservation: Option<Reservation>,
    /// The span current where the request was admitted: inside the service's
    /// own tracing layers, so tasks can follow from the request's span.
    span: Option<Span>,
    route: BackgroundTasks,
    response: BackgroundTasks,
    extracted: BackgroundTasks,
}

/// Where a request's tasks come from, in the order they run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin {
    /// Route-level layers; an outer layer's tasks come first.
    Route,
    /// Response parts.
    Response,
    /// Groups the handler extracted.
    Extracted,
}

impl Scope {
    pub(crate) fn new(runner: Runner) -> Self {
        Self {
            runner,
            reservation: None,
            span: None,
            route: BackgroundTasks::new(),
            response: BackgroundTasks::new(),
            extracted: BackgroundTasks::new(),
        }
    }

    pub(crate) fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Takes this request's place in the runner, once however many route
    /// layers and extractors ask.
    pub(crate) fn admit(&mut self) -> Result<(), Refused> {
        if self.reservation.is_none() {
            self.reservation = Some(self.runner.reserve()?);
            if tracing::enabled!(tracing::Level::DEBUG) {
                self.span = Some(Span::current());
            }
        }
        Ok(())
    }

    pub(crate) fn add(&mut self, origin: Origin, tasks: BackgroundTasks) {
        match origin {
            Origin::Route => {
                let mut route = tasks;
                route.merge(self.route.take());
                self.route = route;
            }
            Origin::Response => {
                self.response.merge(tasks);
            }
            Origin::Extracted => {
                self.extracted.merge(tasks);
            }
        }
    }

    /// Every task, in the order it runs.
    fn take_tasks(&mut self) -> BackgroundTasks {
        // Most requests have tasks of one origin: no merging then.
        match (
            self.route.is_empty(),
            self.response.is_empty(),
            self.extracted.is_empty(),
        ) {
            (_, true, true) => return self.route.take(),
            (true, _, true) => return self.response.take(),
            (true, true, _) => return self.extracted.take(),
            _ => {}
        }
        let mut tasks = self.route.take();
        tasks.merge(self.response.take());
        tasks.merge(self.extracted.take());
        tasks
    }

    /// Called once the response is there: accepts its tasks, in the
    /// request's place (given back if there are none).
    pub(crate) fn take_deferred(&mut self) -> Option<Deferred> {
        let tasks = self.take_tasks();
        let reservation = self.reservation.take();
        if tasks.is_empty() {
            return None;
        }
        let span = self.span.take().unwrap_or_else(Span::none);
        Some(match reservation {
            Some(reservation) => reservation.defer_in(tasks, &span),
            // The handler returned tasks on a route that reserved no place:
            // they are promised by now, so take them anyway.
            None => self.runner.defer_over_limit(tasks, &span),
        })
    }
}

/// Lends `scope` to this thread while `f` runs; it is taken back after,
/// even if `f` panics. Nested layers each lend their own.
pub(crate) fn lend<R>(scope: &RefCell<Scope>, f: impl FnOnce() -> R) -> R {
    CURRENT.set(scope, f)
}

/// Runs `f` on the scope lent to this thread, if any. `f` must not reach
/// for the scope again; if it does, it finds none.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut Scope) -> R) -> Option<R> {
    if !CURRENT.is_set() {
        return None;
    }
    CURRENT.with(|current| Some(f(&mut *current.try_borrow_mut().ok()?)))
}

/// Adds `tasks` to the scope lent to this thread; gives them back where
/// there is none.
fn add_to_current(origin: Origin, tasks: BackgroundTasks) -> Result<(), BackgroundTasks> {
    let mut tasks = Some(tasks);
    with_current(|scope| scope.add(origin, tasks.take().expect("taken once")));
    tasks.map_or(Ok(()), Err)
}

/// Adds a response's tasks to the request's scope, or, where the scope is
/// not lent (the service is polled on another task), to the response's
/// extensions, where the executing layer finds them too: route tasks before
/// what is there, response tasks after.
pub(crate) fn add_or_attach(origin: Origin, tasks: BackgroundTasks, extensions: &mut Extensions) {
    let Err(mut tasks) = add_to_current(origin, tasks) else {
        return;
    };
    if let Origin::Route = origin {
        if let Some(own) = extensions.remove::<BackgroundTasks>() {
            tasks.merge(own);
        }
    }
    super::attach(extensions, tasks);
}

/// Where an extracted group goes when the handler drops it: the request's
/// scope when dropped inside the request, else straight to the runner.
pub(crate) struct ExtractedSink(pub(crate) Runner);

impl Deliver for ExtractedSink {
    fn deliver(&self, tasks: BackgroundTasks) {
        if let Err(tasks) = add_to_current(Origin::Extracted, tasks) {
            // The handler kept its group past its request (moved it into a
            // spawned task, say): the tasks were still promised, so run them.
            tracing::debug!("background tasks delivered outside their request; starting them now");
            self.0.defer_over_limit(tasks, &Span::none()).start();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackgroundTask;

    fn named(name: &'static str) -> BackgroundTasks {
        BackgroundTask::new(|| {}, ()).name(name).into()
    }

    #[test]
    fn tasks_come_out_route_first_then_response_then_extracted() {
        let scope = RefCell::new(Scope::new(Runner::new()));
        lend(&scope, || {
            with_current(|scope| {
                scope.add(Origin::Extracted, named("extracted"));
                scope.add(Origin::Response, named("response"));
                scope.add(Origin::Route, named("inner route"));
                scope.add(Origin::Route, named("outer route"));
            })
            .expect("lent");
        });
        let tasks = scope.borrow_mut().take_tasks();
        assert_eq!(
            tasks.task_names(),
            ["outer route", "inner route", "response", "extracted"]
        );
    }

    #[test]
    fn a_scope_is_only_seen_while_lent_and_comes_back_after_a_panic() {
        assert!(with_current(|_| ()).is_none());
        let scope = RefCell::new(Scope::new(Runner::new()));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lend(&scope, || {
                assert!(with_current(|_| ()).is_some());
                panic!("a handler bug");
            })
        }));
        assert!(result.is_err());
        assert!(with_current(|_| ()).is_none(), "the scope left the thread");
        assert!(
            scope.try_borrow_mut().is_ok(),
            "and is not borrowed any more"
        );
    }

    #[test]
    fn nested_layers_lend_their_own_scope() {
        let (outer, inner) = (Runner::new(), Runner::new());
        let outer_scope = RefCell::new(Scope::new(outer.clone()));
        let inner_scope = RefCell::new(Scope::new(inner));
        lend(&outer_scope, || {
            lend(&inner_scope, || {
                with_current(|scope| scope.admit().unwrap());
            });
            with_current(|scope| assert!(scope.reservation.is_none()));
        });
        assert!(inner_scope.borrow().reservation.is_some());
    }
}
