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

use std::process::ExitCode;

use epilogue::Runner;

// The same groups as the criterion benchmark.
#[path = "../benches/support/groups.rs"]
mod groups;

use groups::{raw_group, runner_group, Done, Kind, BATCH};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [variant, groups, tasks] if variant == "runner" || variant == "spawn" => groups
            .parse::<u64>()
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
                let done = Done::new(BATCH);
                for _ in 0..BATCH {
                    if through_runner {
                        runner_group(&runner, Kind::Async, tasks, &done);
                    } else {
                        tokio::spawn(raw_group(Kind::Async, tasks, done.clone()));
                    }
                }
                done.wait().await;
            }
        })
        .await
        .expect("the batches ran");
    });
    ExitCode::SUCCESS
}
