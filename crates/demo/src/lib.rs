//! The library half of `epilogue-demo`: its routes, configuration, input
//! and tasks, public so that the load benchmarks' comparator (`bench/baseline`)
//! runs the very same task and input code without epilogue.

pub mod app;
pub mod config;
pub mod input;
pub mod tasks;
