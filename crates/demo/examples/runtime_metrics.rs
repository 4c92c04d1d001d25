//! `runtime_metrics`: `epilogue-demo` exactly as `src/main.rs` starts it
//! (same flags, same router, same runner), plus a sampler task that prints
//! tokio's runtime metrics once a second to stderr, as TSV deltas: what
//! `bench/runtime-metrics.sh` reads to explain what background tasks cost the
//! request path (README, "What the last step costs (runtime metrics)").
//!
//! Built with `RUSTFLAGS="--cfg tokio_unstable"` it prints every counter;
//! without it, only tokio's stable metrics (busy time, parks, alive tasks,
//! global queue depth). The sampler is one extra poll a second.
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=/work/target-metrics \
//!   cargo build --release -p epilogue-demo --example runtime_metrics
//! taskset -c 0 /work/target-metrics/release/examples/runtime_metrics \
//!   --max-running 262144 --max-pending 262144 --email-delay-ms 1000 \
//!   --addr 127.0.0.1:0 --data-dir /tmp/rm-data 2>metrics.tsv
//! ```

// `tokio_unstable` is a cfg of tokio's, set only by a measurement build
// (RUSTFLAGS): the workspace does not declare it.
#![allow(unexpected_cfgs)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use epilogue_demo::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    epilogue_demo::init_logging();
    let config = Config::parse();
    if config.command.is_some() {
        return epilogue_demo::exit(
            "runtime_metrics",
            Err("runtime_metrics runs the server only (no subcommand)".into()),
        );
    }
    tokio::spawn(sample(Duration::from_secs(1)));
    let result = epilogue_demo::service::serve(config).await;
    epilogue_demo::exit("runtime_metrics", result)
}

/// Cumulative counters, summed over the workers.
#[derive(Clone, Copy, Default)]
struct Counters {
    busy: Duration,
    parks: u64,
    park_unparks: u64,
    #[cfg(tokio_unstable)]
    unstable: Unstable,
}

#[cfg(tokio_unstable)]
#[derive(Clone, Copy, Default)]
struct Unstable {
    polls: u64,
    noops: u64,
    steals: u64,
    local_schedules: u64,
    overflows: u64,
    remote_schedules: u64,
    forced_yields: u64,
    io_ready: u64,
    spawned: u64,
}

fn read(m: &tokio::runtime::RuntimeMetrics) -> Counters {
    let mut c = Counters::default();
    for w in 0..m.num_workers() {
        c.busy += m.worker_total_busy_duration(w);
        c.parks += m.worker_park_count(w);
        c.park_unparks += m.worker_park_unpark_count(w);
        #[cfg(tokio_unstable)]
        {
            c.unstable.polls += m.worker_poll_count(w);
            c.unstable.noops += m.worker_noop_count(w);
            c.unstable.steals += m.worker_steal_count(w);
            c.unstable.local_schedules += m.worker_local_schedule_count(w);
            c.unstable.overflows += m.worker_overflow_count(w);
        }
    }
    #[cfg(tokio_unstable)]
    {
        c.unstable.remote_schedules = m.remote_schedule_count();
        c.unstable.forced_yields = m.budget_forced_yield_count();
        c.unstable.io_ready = m.io_driver_ready_count();
        c.unstable.spawned = m.spawned_tasks_count();
    }
    c
}

/// Prints one TSV line of deltas per `every`, after a header.
async fn sample(every: Duration) {
    let m = tokio::runtime::Handle::current().metrics();
    #[cfg(tokio_unstable)]
    eprintln!(
        "t_s\twall_ms\tbusy_ms\tparks\tpark_unparks\talive\tglobal_q\tpolls\tnoops\tsteals\tlocal_sched\toverflows\tremote_sched\tforced_yields\tio_ready\tspawned\tblocking_threads\tblocking_queue"
    );
    #[cfg(not(tokio_unstable))]
    eprintln!("t_s\twall_ms\tbusy_ms\tparks\tpark_unparks\talive\tglobal_q");
    let start = Instant::now();
    let mut last = read(&m);
    let mut last_at = start;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let c = read(&m);
        eprintln!(
            "{:.1}\t{:.1}\t{:.1}\t{}\t{}\t{}\t{}{}",
            (now - start).as_secs_f64(),
            (now - last_at).as_secs_f64() * 1e3,
            (c.busy - last.busy).as_secs_f64() * 1e3,
            c.parks - last.parks,
            c.park_unparks - last.park_unparks,
            m.num_alive_tasks(),
            m.global_queue_depth(),
            unstable_columns(&m, &c, &last),
        );
        last = c;
        last_at = now;
    }
}

#[cfg(tokio_unstable)]
fn unstable_columns(m: &tokio::runtime::RuntimeMetrics, c: &Counters, last: &Counters) -> String {
    let (u, l) = (c.unstable, last.unstable);
    format!(
        "\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        u.polls - l.polls,
        u.noops - l.noops,
        u.steals - l.steals,
        u.local_schedules - l.local_schedules,
        u.overflows - l.overflows,
        u.remote_schedules - l.remote_schedules,
        u.forced_yields - l.forced_yields,
        u.io_ready - l.io_ready,
        u.spawned - l.spawned,
        // Gauges, as the sample is taken.
        m.num_blocking_threads(),
        m.blocking_queue_depth(),
    )
}

#[cfg(not(tokio_unstable))]
fn unstable_columns(_: &tokio::runtime::RuntimeMetrics, _: &Counters, _: &Counters) -> String {
    String::new()
}
