//! Runs the unit tests of `examples/pvcwatch/quantity.rs` under `cargo test --workspace`.
//!
//! Examples are built (not tested) by `cargo test`, and the smoke tests need their plain
//! binaries, so the quantity module is compiled into this integration test instead of giving the
//! example a test harness.

#[allow(dead_code, reason = "the tests use only part of the quantity type")]
#[path = "../examples/pvcwatch/quantity.rs"]
mod quantity;
