//! Commits shared across requests: the durable tasks of concurrent
//! requests are inserted in one transaction.
//!
//! Each enqueue sends its task to one inserting task and waits for its
//! batch to commit. That task takes whatever has arrived (at most
//! [`MAX_BATCH`]) and inserts it with River's batch insert, in one
//! transaction: while one batch is being committed, the next one fills up.
//! With one client, each batch holds one task and nothing waits; with many,
//! one fsync serves many responses. No timer delays a lone task.

use std::collections::HashSet;
use std::sync::Arc;

use riverqueue::{Client, InsertBatch, InsertBatchResult, InsertOpts};
use tokio::sync::{mpsc, oneshot};

use crate::envelope::Envelope;
use crate::error::DurableError;
use crate::file::StoreFile;
use crate::task::DurableTask;

/// The most callers in one transaction.
const MAX_BATCH: usize = 256;
/// Tasks waiting for a batch before enqueuers wait to send theirs.
const QUEUE: usize = 4096;

/// One caller's tasks on their way into a batch: they are never split
/// between two transactions.
#[derive(Default)]
pub(crate) struct Tasks {
    pushes: Vec<Push>,
}

/// One task, ready to join a batch.
struct Push {
    /// Its kind and idempotency key, if it has one: River refuses a batch
    /// in which a unique key appears twice.
    key: Option<(&'static str, String)>,
    push: Box<dyn FnOnce(&mut InsertBatch) + Send + Sync>,
}

impl Tasks {
    /// Adds `task`, stored with `opts`.
    pub(crate) fn push<T: DurableTask>(&mut self, task: Envelope<T>, opts: InsertOpts) {
        let key = task.idempotency_key.clone().map(|key| (T::NAME, key));
        self.add(Push {
            key,
            push: Box::new(move |batch: &mut InsertBatch| {
                batch.push_with(task, opts);
            }),
        });
    }

    /// A task whose kind and key are already among these is a duplicate
    /// of the earlier one: it stores nothing, as it would in a later
    /// transaction.
    fn add(&mut self, push: Push) {
        if let Some(key) = &push.key {
            if self.keys().any(|known| known == key) {
                return;
            }
        }
        self.pushes.push(push);
    }

    pub(crate) fn append(&mut self, other: Self) {
        for push in other.pushes {
            self.add(push);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pushes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pushes.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &(&'static str, String)> {
        self.pushes.iter().filter_map(|push| push.key.as_ref())
    }
}

struct Request {
    tasks: Tasks,
    reply: oneshot::Sender<Result<Vec<InsertBatchResult>, DurableError>>,
}

/// The sending side of the inserting task.
#[derive(Clone, Debug)]
pub(crate) struct Batcher {
    sender: mpsc::Sender<Request>,
}

impl Batcher {
    /// Starts the inserting task; it ends when every `Batcher` is dropped.
    /// With the store's SQLite `file`, each batch is checked to have been
    /// committed into that file.
    pub(crate) fn start(client: Client, file: Option<Arc<StoreFile>>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(insert_batches(client, file, receiver));
        Self { sender }
    }

    /// Inserts `tasks` with the tasks that arrive with them; their rows, in
    /// order.
    pub(crate) async fn insert(
        &self,
        tasks: Tasks,
    ) -> Result<Vec<InsertBatchResult>, DurableError> {
        let (reply, replied) = oneshot::channel();
        self.sender
            .send(Request { tasks, reply })
            .await
            .map_err(|_| DurableError::Closed)?;
        replied.await.unwrap_or(Err(DurableError::Closed))
    }
}

async fn insert_batches(
    client: Client,
    file: Option<Arc<StoreFile>>,
    mut receiver: mpsc::Receiver<Request>,
) {
    let mut requests = Vec::with_capacity(MAX_BATCH);
    // Requests that repeat an idempotency key of the batch before them:
    // River refuses a batch in which a unique key appears twice, so they
    // wait for the next one (and find the first task there).
    let mut held: Vec<Request> = Vec::new();
    loop {
        if held.is_empty() {
            if receiver.recv_many(&mut requests, MAX_BATCH).await == 0 {
                return;
            }
        } else {
            requests.append(&mut held);
            while requests.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => requests.push(request),
                    Err(_) => break,
                }
            }
        }
        let mut batch = InsertBatch::new();
        let mut replies = Vec::with_capacity(requests.len());
        let mut keys = HashSet::new();
        for request in requests.drain(..) {
            if request.tasks.keys().any(|key| keys.contains(key)) {
                held.push(request);
                continue;
            }
            keys.extend(request.tasks.keys().cloned());
            replies.push((request.reply, request.tasks.len()));
            for push in request.tasks.pushes {
                (push.push)(&mut batch);
            }
        }
        // River begins on a task of its own, so that this insert cannot be
        // abandoned halfway; the whole batch commits, or none of it.
        let inserted = client
            .insert_batch(batch)
            .await
            .map_err(|e| DurableError::Store(Arc::new(e)));
        // Committed into a file deleted or replaced meanwhile is not
        // committed: no one will open it again.
        let inserted = match (&file, inserted) {
            (Some(file), Ok(rows)) => file.check().map(|()| rows),
            (_, inserted) => inserted,
        };
        match inserted {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                for (reply, len) in replies {
                    let _ = reply.send(Ok(rows.by_ref().take(len).collect()));
                }
            }
            Err(error) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.share()));
                }
            }
        }
    }
}
