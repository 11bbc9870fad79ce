//! Helpers shared by the validation policy's integration tests.

use std::time::Instant;

/// Runs `f`, prints how long it took (`measured: <what>: <time>`; the figures in the docs, never
/// asserted).
pub fn measured<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    eprintln!("measured: {what}: {:?}", t.elapsed());
    out
}
