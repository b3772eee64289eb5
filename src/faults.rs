//! Faults a test injects into a running worker process, to check that a thread the worker needs
//! is never silently gone (issue 12): `tests/worker_health.rs` makes the real code-sync thread
//! panic, or hang, while orders flow, and checks the exit code, `/healthz` and the outputs.
//!
//! A fault of our own is needed because nothing in the data can kill that thread any more: a
//! corrupt version, which used to panic it, is now refused and counted.
//!
//! Armed through an environment variable, and only in builds with debug assertions — the ones
//! `cargo test` builds and runs. In a release build each hook is an empty function that never
//! reads the environment, so no setting of a production worker can make it fault. A cargo feature
//! would not do: a feature cannot be switched on for `cargo test` alone, so the test would need a
//! separate build (or be skipped by a plain `cargo test`).

/// `panic` or `hang`: what the code-sync thread does when it is about to apply the first version
/// published after the worker started (where a corrupt version used to panic it).
pub const CODE_SYNC: &str = "PROMO_TEST_FAULT_CODE_SYNC";

/// Called by the code-sync follower before it reads a newly published `version`.
#[cfg(debug_assertions)]
// The panic is the fault under test.
#[allow(clippy::panic)]
pub fn code_sync_applying(version: u64) {
    match std::env::var(CODE_SYNC).as_deref() {
        Ok("panic") => panic!("test fault {CODE_SYNC}=panic, applying version {version}"),
        Ok("hang") => {
            tracing::warn!(
                version,
                "test fault {CODE_SYNC}=hang: the code-sync thread stops"
            );
            // Parked for good: the thread is still there but never beats again.
            loop {
                std::thread::park();
            }
        }
        _ => {}
    }
}

/// Called by the code-sync follower before it reads a newly published version; a release build
/// injects no fault.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn code_sync_applying(_version: u64) {}
