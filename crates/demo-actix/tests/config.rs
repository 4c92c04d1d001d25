//! The contract tests of `crates/demo/tests/config.rs`, run against this binary.

#[path = "../../demo/tests/config.rs"]
mod config;
