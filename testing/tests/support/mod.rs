//! Helpers shared by integration tests (not a test target: cargo only builds `tests/*.rs`).

pub mod python;
