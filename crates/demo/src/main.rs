//! `epilogue-demo`: the five background-task patterns of the reference
//! documentation as one small service, plus durable tasks. Its behaviour is
//! fixed by its README (crates/demo/README.md); run it with
//! `cargo run --release -p epilogue-demo`.

use std::process::ExitCode;

use clap::Parser;

use epilogue_demo::config::{Command, Config};
use epilogue_demo::service;

#[tokio::main]
async fn main() -> ExitCode {
    epilogue_demo::init_logging();
    epilogue_demo::raise_open_files_limit();
    let config = Config::parse();
    let result = match &config.command {
        Some(Command::Worker(flags)) => service::work(flags).await,
        None => service::serve(config).await,
    };
    epilogue_demo::exit("epilogue-demo", result)
}
