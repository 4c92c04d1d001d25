//! What it costs to schedule and run one group of empty tasks through
//! [`epilogue::Runner`], against raw `tokio::spawn` and
//! `tokio_util::task::TaskTracker::spawn`, for groups of 1 and 10 tasks,
//! async (`|| async {}`) and blocking (`|| {}`).
//!
//! Run with `cargo bench -p epilogue --bench runner` (about a minute).
//!
//! Every variant does the same work per group, measured until it has
//! completed:
//!
//! - a group of `k` tasks is `k - 1` empty tasks and a last one that counts
//!   the group as done (one atomic decrement; the last group of a batch wakes
//!   the waiter). The tasks of a group run one after another, as the runner
//!   runs them: with `tokio::spawn` and `TaskTracker` the group is one spawned
//!   future that awaits each task in turn, and a blocking task is awaited
//!   through `spawn_blocking`, which is what the runner does with a plain `fn`;
//! - groups are spawned from inside a worker of a one-worker multi-thread
//!   runtime (as a handler spawns them in a server pinned to one core), in
//!   batches of [`BATCH`]: spawn the batch, then wait for every group of it;
//! - the time reported is per group: a batch's time divided by its size;
//! - every variant starts from the same state: its runner (or tracker) is
//!   made once per benchmark, outside the timing (the runner's lanes
//!   start with its first batch and stay), and each measurement first runs
//!   one untimed batch, so that the allocator's caches and the worker's
//!   queues are warm for every variant alike.
//!
//! For the runner the group is built per spawn with `BackgroundTasks::add_task`
//! (a handler builds it per request), so its cost includes boxing each task.
//! `bench/lib/criterion_ratios.py` prints each runner time against
//! `tokio::spawn`'s, and our target (at most 1.3x for async groups).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use epilogue::Runner;
use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;

#[path = "support/groups.rs"]
mod groups;

use groups::{raw_group, runner_group, Done, Kind, BATCH};

#[derive(Clone, Copy, Debug)]
enum Variant {
    Runner,
    TokioSpawn,
    TaskTracker,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Runner => "epilogue::Runner::spawn",
            Variant::TokioSpawn => "tokio::spawn",
            Variant::TaskTracker => "TaskTracker::spawn",
        }
    }
}

/// One batch of `batch` groups, spawned then waited for.
async fn batch(
    variant: Variant,
    kind: Kind,
    tasks: usize,
    batch: u64,
    runner: &Runner,
    tracker: &TaskTracker,
) {
    let done = Done::new(batch);
    for _ in 0..batch {
        match variant {
            Variant::Runner => runner_group(runner, kind, tasks, &done),
            Variant::TokioSpawn => {
                tokio::spawn(raw_group(kind, tasks, done.clone()));
            }
            Variant::TaskTracker => {
                tracker.spawn(raw_group(kind, tasks, done.clone()));
            }
        }
    }
    done.wait().await;
}

/// Spawns and waits for `iters` groups in batches, after one untimed
/// batch; returns the time taken.
async fn run(
    variant: Variant,
    kind: Kind,
    tasks: usize,
    iters: u64,
    runner: Runner,
    tracker: TaskTracker,
) -> Duration {
    batch(variant, kind, tasks, BATCH, &runner, &tracker).await;
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        batch(variant, kind, tasks, n, &runner, &tracker).await;
        left -= n;
    }
    start.elapsed()
}

fn runtime() -> Runtime {
    // One worker: the benchmarked servers run pinned to one core.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    for kind in [Kind::Async, Kind::Blocking] {
        for tasks in [1usize, 10] {
            let mut group = c.benchmark_group(format!("group of {tasks} {} task(s)", kind.name()));
            group.throughput(Throughput::Elements(1));
            for variant in [Variant::TokioSpawn, Variant::TaskTracker, Variant::Runner] {
                let runner = Runner::builder().max_running(1 << 20).build();
                let tracker = TaskTracker::new();
                let mut groups = 0;
                group.bench_function(BenchmarkId::from_parameter(variant.name()), |b| {
                    b.iter_custom(|iters| {
                        groups += iters + BATCH;
                        let (runner, tracker) = (runner.clone(), tracker.clone());
                        // Spawned from inside a worker, as a handler does.
                        rt.block_on(async {
                            tokio::spawn(run(variant, kind, tasks, iters, runner, tracker))
                                .await
                                .expect("the benchmark task does not panic")
                        })
                    })
                });
                if let Variant::Runner = variant {
                    // Outside the timed part: every task ran, and ran well.
                    let report = rt.block_on(runner.shutdown(Duration::from_secs(10)));
                    assert!(report.drained);
                    assert_eq!(
                        report.stats.succeeded,
                        groups * tasks as u64,
                        "{:?}",
                        report.stats
                    );
                }
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    // Short: 12 benchmarks in about a minute on a 2-core machine.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(1000))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
