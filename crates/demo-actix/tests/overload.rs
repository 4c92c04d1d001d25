//! The contract tests of `crates/demo/tests/overload.rs`, run against this binary.

#[path = "../../demo/tests/overload.rs"]
mod overload;
