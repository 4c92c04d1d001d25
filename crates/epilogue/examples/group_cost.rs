//! `group_cost`: the work of `benches/runner.rs`, without criterion, for
//! `bench/group-profile.sh`, which counts its instructions under callgrind:
//! N groups of TASKS empty async tasks, spawned in batches of 100 from
//! inside the worker of a one-worker runtime, through the runner or as
//! `tokio::spawn`ed futures that await their tasks in turn.
//!
//! ```text
//! cargo run --release -p epilogue --example group_cost -- runner 10000 1
//! cargo run --release -p epilogue --example group_cost -- spawn 10000 1
//! ```
//!
//! Two runs of N and 6N groups give the cost of one group, start-up and
//! shut-down cancelling out: `(Ir(6N) - Ir(N)) / 5N`.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use epilogue::{BackgroundTasks, Runner};
use tokio::sync::Notify;

/// As in `benches/runner.rs`: fits a worker's local run queue.
const BATCH: usize = 100;

/// Counts groups down to zero, then wakes the waiter.
struct Done {
    left: AtomicUsize,
    notify: Notify,
}

impl Done {
    fn arrive(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.notify.notify_one();
        }
    }
}

fn runner_group(runner: &Runner, tasks: usize, done: &Arc<Done>) {
    let mut group = BackgroundTasks::new();
    for _ in 1..tasks {
        group.add_task(|| async {}, ());
    }
    group.add_task(
        |done: Arc<Done>| async move { done.arrive() },
        (done.clone(),),
    );
    runner
        .spawn(group)
        .expect("the runner has room for a batch");
}

async fn raw_group(tasks: usize, done: Arc<Done>) {
    for _ in 1..tasks {
        black_box(|| async {})().await;
    }
    async move { done.arrive() }.await;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [variant, groups, tasks] if variant == "runner" || variant == "spawn" => groups
            .parse::<usize>()
            .ok()
            .zip(tasks.parse::<usize>().ok().filter(|&t| t >= 1))
            .map(|(groups, tasks)| (variant == "runner", groups, tasks)),
        _ => None,
    };
    let Some((through_runner, groups, tasks)) = parsed else {
        eprintln!("usage: group_cost runner|spawn GROUPS TASKS (TASKS at least 1)");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        // From inside the worker, as a handler spawns its groups.
        tokio::spawn(async move {
            let runner = Runner::new();
            for _ in 0..groups.div_ceil(BATCH) {
                let done = Arc::new(Done {
                    left: AtomicUsize::new(BATCH),
                    notify: Notify::new(),
                });
                for _ in 0..BATCH {
                    if through_runner {
                        runner_group(&runner, tasks, &done);
                    } else {
                        tokio::spawn(raw_group(tasks, done.clone()));
                    }
                }
                done.notify.notified().await;
            }
        })
        .await
        .expect("the batches ran");
    });
    ExitCode::SUCCESS
}
