//! The handlers a worker knows, by task name, and the envelope a task is
//! stored in.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::{DurableError, DurableTask, Job};
use crate::runner::panic_message;

/// How a task is stored: its name beside its arguments, so one queue holds
/// every kind of task and a worker can tell which handler to call.
#[derive(Serialize, Deserialize)]
struct Envelope<A> {
    task: String,
    args: A,
}

pub(crate) fn encode<T: DurableTask>(task: &T) -> Result<Vec<u8>, DurableError> {
    serde_json::to_vec(&Envelope {
        task: T::NAME.to_owned(),
        args: task,
    })
    .map_err(|error| DurableError::Encode {
        task: T::NAME,
        error,
    })
}

/// The name a stored payload gives, if it can be read.
pub(crate) fn task_name(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Name {
        task: String,
    }
    serde_json::from_slice::<Name>(payload).ok().map(|n| n.task)
}

/// How one attempt ended.
pub(crate) enum Outcome {
    /// Done, with the handler's output as JSON.
    Done(serde_json::Value),
    /// Failed (an error or a panic): retried while attempts are left.
    Failed(String),
    /// Can never succeed (an unknown name, arguments that do not decode):
    /// dead at once.
    Undecodable(String),
}

type Handler = Arc<dyn Fn(serde_json::Value, Job) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// The tasks a worker runs, by name.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    handlers: HashMap<&'static str, Handler>,
}

impl Registry {
    pub(crate) fn register<T: DurableTask>(&mut self, state: T::State) {
        let handler: Handler = Arc::new(move |args, job| {
            let state = state.clone();
            let task = match serde_json::from_value::<T>(args) {
                Ok(task) => task,
                Err(error) => {
                    let reason = format!("the arguments of {} do not decode: {error}", T::NAME);
                    return std::future::ready(Outcome::Undecodable(reason)).boxed();
                }
            };
            // A panicking handler is a failed attempt, not a dead worker.
            AssertUnwindSafe(task.run(job, state))
                .catch_unwind()
                .map(|result| match result {
                    Ok(Ok(output)) => match serde_json::to_value(output) {
                        Ok(value) => Outcome::Done(value),
                        Err(error) => {
                            Outcome::Failed(format!("its output does not encode: {error}"))
                        }
                    },
                    Ok(Err(error)) => Outcome::Failed(error.to_string()),
                    Err(panic) => Outcome::Failed(format!("panicked: {}", panic_message(&*panic))),
                })
                .boxed()
        });
        self.handlers.insert(T::NAME, handler);
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The run of a stored payload.
    pub(crate) fn run(&self, payload: &[u8], job: Job) -> BoxFuture<'static, Outcome> {
        let envelope = match serde_json::from_slice::<Envelope<serde_json::Value>>(payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                let reason = format!("the stored payload is not a task envelope: {error}");
                return std::future::ready(Outcome::Undecodable(reason)).boxed();
            }
        };
        match self.handlers.get(envelope.task.as_str()) {
            Some(handler) => handler(envelope.args, job),
            None => {
                let reason = format!(
                    "unknown task {:?}: no handler registered under that name",
                    envelope.task
                );
                std::future::ready(Outcome::Undecodable(reason)).boxed()
            }
        }
    }
}
