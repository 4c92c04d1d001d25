//! The contract tests of `crates/demo/tests/bad_input.rs`, run against this binary.

#[path = "../../demo/tests/bad_input.rs"]
mod bad_input;
