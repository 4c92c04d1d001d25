//! Durable tasks from a request: the store joins epilogue's executing layer
//! as a [`Commit`], so that what a handler adds is stored before its
//! response leaves.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::batch::Tasks;
use crate::error::DurableError;
use crate::store::{Enqueue, Enqueued, Store};
use crate::task::{DurableTask, TaskId};
use epilogue::http::{Commit, CommitFuture, PendingCommit};
use http::{Extensions, HeaderMap, StatusCode};

/// Durable tasks returned with a response, stored by the executing layer
/// before the response leaves, whatever its status (the handler chose
/// them). With axum, a response part: `(StatusCode::CREATED, tasks,
/// Json(..))`. If they cannot be stored, the client gets `503` in place of
/// the response.
#[derive(Default)]
#[must_use = "durable tasks are stored only when returned with the response"]
pub struct DurableTasks {
    tasks: Tasks,
}

impl DurableTasks {
    /// No task yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `task`.
    ///
    /// # Errors
    ///
    /// [`DurableError::Encode`] if it does not serialise as a JSON object.
    pub fn add<T: DurableTask>(&mut self, task: &T) -> Result<&mut Self, DurableError> {
        self.add_with(task, Enqueue::new())
    }

    /// Adds `task` with an idempotency key or a delay.
    ///
    /// # Errors
    ///
    /// As [`add`](Self::add).
    pub fn add_with<T: DurableTask>(
        &mut self,
        task: &T,
        options: Enqueue,
    ) -> Result<&mut Self, DurableError> {
        let (task, opts) = options.prepare(task)?;
        self.tasks.push(task, opts);
        Ok(self)
    }

    /// How many tasks were added.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Puts them in a response's extensions, for the executing layer: how
    /// a service that is not an axum handler returns them.
    pub fn attach(self, extensions: &mut Extensions) {
        match extensions.get_mut::<Attached>() {
            Some(attached) => attached.0.tasks.append(self.tasks),
            None => {
                extensions.insert(Attached(self));
            }
        }
    }
}

impl fmt::Debug for DurableTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableTasks")
            .field("len", &self.tasks.len())
            .finish()
    }
}

/// Durable tasks in a response's extensions; a clone carries none, so they
/// are stored once, with the response they came with.
struct Attached(DurableTasks);

impl Clone for Attached {
    fn clone(&self) -> Self {
        Self(DurableTasks::new())
    }
}

impl Drop for Attached {
    // Only a report: the response they came with reached no executing layer
    // with a store, so they were never stored, and its success was false.
    fn drop(&mut self) {
        if !self.0.is_empty() {
            tracing::error!(
                tasks = self.0.len(),
                "durable tasks returned with a response that reached no executing layer with a store (`.commit(store)`); they were not stored"
            );
        }
    }
}

/// One request's durable tasks and its store, in the request's extensions.
#[derive(Clone)]
pub struct RequestDurable {
    inner: Arc<Request>,
}

struct Request {
    store: Store,
    /// Added with [`RequestDurable::add`]; `None` once the response is
    /// there.
    added: Mutex<Option<DurableTasks>>,
    /// The request's W3C trace context, stored with its tasks.
    traceparent: Option<String>,
}

impl RequestDurable {
    /// The handle the executing layer put in these extensions, if it was
    /// given a store.
    pub fn from_extensions(extensions: &Extensions) -> Option<Self> {
        extensions.get::<Self>().cloned()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Stores `task` once the handler has answered with a success (status
    /// below 400), in one transaction with the request's other durable
    /// tasks and those of concurrent requests, before the response leaves.
    /// If it cannot be stored, the client gets `503` in place of the
    /// response, and none of the request's in-memory tasks run.
    ///
    /// Its id is not known yet; when the response must carry it, use
    /// [`enqueue`](Self::enqueue).
    ///
    /// # Errors
    ///
    /// [`DurableError::Encode`] if it does not serialise as a JSON object;
    /// [`DurableError::Answered`] if the response was already produced.
    pub fn add<T: DurableTask>(&self, task: &T) -> Result<(), DurableError> {
        self.add_with(task, Enqueue::new())
    }

    /// [`add`](Self::add), with an idempotency key or a delay.
    ///
    /// # Errors
    ///
    /// As [`add`](Self::add).
    pub fn add_with<T: DurableTask>(&self, task: &T, options: Enqueue) -> Result<(), DurableError> {
        let options = self.traced(options);
        let mut added = self.inner.added.lock().unwrap_or_else(|e| e.into_inner());
        let Some(added) = added.as_mut() else {
            return Err(DurableError::Answered);
        };
        added.add_with(task, options)?;
        Ok(())
    }

    /// Stores `task` now (sharing a transaction with concurrent requests)
    /// and returns its id once committed: for a response that names it.
    /// Map an error to `503` (with axum, return it: it is a response).
    ///
    /// # Errors
    ///
    /// As [`Store::enqueue`].
    pub async fn enqueue<T: DurableTask>(&self, task: &T) -> Result<TaskId, DurableError> {
        Ok(self.enqueue_with(task, Enqueue::new()).await?.id)
    }

    /// [`enqueue`](Self::enqueue), with an idempotency key or a delay.
    ///
    /// # Errors
    ///
    /// As [`Store::enqueue`].
    pub async fn enqueue_with<T: DurableTask>(
        &self,
        task: &T,
        options: Enqueue,
    ) -> Result<Enqueued, DurableError> {
        self.inner
            .store
            .enqueue_with(task, self.traced(options))
            .await
    }

    /// `options`, with the request's trace context.
    fn traced(&self, options: Enqueue) -> Enqueue {
        match &self.inner.traceparent {
            Some(traceparent) => options.traceparent(traceparent.clone()),
            None => options,
        }
    }
}

impl fmt::Debug for RequestDurable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestDurable").finish_non_exhaustive()
    }
}

impl Commit for Store {
    fn begin(
        &self,
        headers: &HeaderMap,
        extensions: &mut Extensions,
    ) -> Option<Arc<dyn PendingCommit>> {
        let inner = Arc::new(Request {
            store: self.clone(),
            added: Mutex::new(Some(DurableTasks::new())),
            // The request's span's own context when OpenTelemetry traces the
            // service (the task's runs link to that span), else its header.
            traceparent: crate::trace::current().or_else(|| crate::trace::from_headers(headers)),
        });
        extensions.insert(RequestDurable {
            inner: inner.clone(),
        });
        Some(inner)
    }
}

impl PendingCommit for Request {
    fn commit(&self, status: StatusCode, extensions: &mut Extensions) -> Option<CommitFuture> {
        let added = self
            .added
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let mut tasks = extensions
            .remove::<Attached>()
            .map(|mut attached| std::mem::take(&mut attached.0))
            .unwrap_or_default();
        // Like extracted in-memory tasks: only a success stores them.
        if status.as_u16() < 400 {
            tasks.tasks.append(added.tasks);
        }
        if tasks.is_empty() {
            return None;
        }
        let store = self.store.clone();
        Some(Box::pin(async move {
            // All of them in one transaction, shared with other requests.
            store.insert(tasks.tasks).await?;
            Ok(())
        }))
    }

    fn abandon(&self) {
        self.added.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
