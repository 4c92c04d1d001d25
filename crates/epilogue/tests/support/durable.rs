//! What the durable tests of both stores share: a task that reports its
//! runs, and a wait for a task's state.

use std::time::{Duration, Instant};

use epilogue::durable::{BoxError, DurableTask, Job, Store, TaskInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How long a test waits for a task's state.
const PATIENCE: Duration = Duration::from_secs(20);

/// Reports each run: (task id, text, attempt).
#[derive(Serialize, Deserialize)]
pub struct Echo {
    pub text: String,
}

impl DurableTask for Echo {
    const NAME: &'static str = "echo";
    type State = mpsc::UnboundedSender<(String, String, u32)>;
    type Output = usize;

    async fn run(self, job: Job, runs: Self::State) -> Result<usize, BoxError> {
        let _ = runs.send((job.id().to_string(), self.text.clone(), job.attempt()));
        Ok(self.text.len())
    }
}

/// Polls the task until `done` holds, or panics after [`PATIENCE`].
pub async fn info_until(
    store: &Store,
    id: &str,
    what: &str,
    done: impl Fn(&TaskInfo) -> bool,
) -> TaskInfo {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = store.task(id).await.unwrap();
        match info {
            Some(info) if done(&info) => return info,
            _ => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {info:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
