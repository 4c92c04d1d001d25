//! Durable tasks returned with a response.

use super::{DurableError, DurableTask, Encoded, TaskId};

/// Durable tasks a handler returns with its response, the way it returns a
/// [`BackgroundTasks`](crate::BackgroundTasks): with axum, as a response
/// part, `(StatusCode::CREATED, tasks, Json(..))`; with another tower
/// service, through [`http::attach_durable`](crate::http::attach_durable).
///
/// The executing layer stores them, with the request's other durable tasks
/// and in one transaction, before the response is sent, whatever its
/// status (the handler chose them); if they cannot be stored, the client
/// gets `503` instead. Each task's id is known as soon as it is added, for
/// the response's body.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use axum::{http::StatusCode, Json};
/// use epilogue::durable::{BoxError, DurableTask, DurableTasks, Job};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Audit { line: String }
///
/// impl DurableTask for Audit {
///     const NAME: &'static str = "audit";
///     type State = ();
///     type Output = ();
///     async fn run(self, _: Job, (): ()) -> Result<(), BoxError> { Ok(()) }
/// }
///
/// async fn create() -> Result<(StatusCode, DurableTasks, Json<String>), String> {
///     let mut tasks = DurableTasks::new();
///     let id = tasks.add(&Audit { line: "created".into() }).map_err(|e| e.to_string())?;
///     Ok((StatusCode::CREATED, tasks, Json(id.to_string())))
/// }
/// # }
/// ```
#[derive(Debug, Default)]
#[must_use = "durable tasks are stored only when returned with a response"]
pub struct DurableTasks {
    tasks: Vec<Encoded>,
}

impl DurableTasks {
    /// No task yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `task` after those added so far, and returns its id.
    ///
    /// # Errors
    ///
    /// [`DurableError::Encode`] if it does not serialise.
    pub fn add<T: DurableTask>(&mut self, task: &T) -> Result<TaskId, DurableError> {
        let encoded = Encoded::new(task)?;
        let id = encoded.id.clone();
        self.tasks.push(encoded);
        Ok(id)
    }

    /// The ids of the tasks added so far, in order.
    pub fn ids(&self) -> impl Iterator<Item = &TaskId> {
        self.tasks.iter().map(|task| &task.id)
    }

    /// How many tasks were added.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task was added.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<Encoded> {
        std::mem::take(&mut self.tasks)
    }

    pub(crate) fn append(&mut self, mut other: DurableTasks) {
        self.tasks.append(&mut other.tasks);
    }
}

impl Drop for DurableTasks {
    // Only a report: the tasks were never stored.
    fn drop(&mut self) {
        if !self.tasks.is_empty() && !std::thread::panicking() {
            tracing::error!(
                tasks = self.tasks.len(),
                "durable tasks dropped without being stored: return them with a response that \
                 reaches an executing layer with a store (BackgroundLayer::durable)"
            );
        }
    }
}
