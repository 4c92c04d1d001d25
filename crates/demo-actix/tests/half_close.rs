//! The contract tests of `crates/demo/tests/half_close.rs`, run against this binary.

#[path = "../../demo/tests/half_close.rs"]
mod half_close;
