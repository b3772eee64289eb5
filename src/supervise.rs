//! No thread dies silently: `run` watches every thread the worker needs (the poll loop, the
//! code-sync follower, the admin server) and turns the unexpected end of any of them into a
//! fatal exit, so the supervisor (Kubernetes, compose) restarts the process instead of leaving a
//! worker that serves an ever older table or answers no probe.
//!
//! The threads are watched by polling `JoinHandle::is_finished`, which needs no cooperation from
//! the thread: a panic, an early return and a normal end all count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the watched threads are looked at. An end is noticed within this; the exit that
/// follows takes longer anyway (the drain).
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// A thread to watch: its name for the log, and whether it has ended.
pub struct Watched<'a> {
    pub name: &'static str,
    pub finished: Box<dyn Fn() -> bool + 'a>,
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The poll loop ended (drained on request, or failed): its own outcome says how to exit.
    PollLoop,
    /// A helper thread ended while no shutdown was requested. Shutdown has been requested
    /// since, so the poll loop drains; the process must then exit non-zero.
    Unexpectedly(&'static str),
}

/// Waits until the poll loop ends or another watched thread ends unexpectedly. A helper thread
/// that ends after a shutdown request is expected (code-sync stops on the same flag) and is not
/// watched any further.
pub fn wait(
    poll_loop: &dyn Fn() -> bool,
    others: &[Watched<'_>],
    shutdown: &Arc<AtomicBool>,
) -> Ended {
    loop {
        if poll_loop() {
            return Ended::PollLoop;
        }
        if !shutdown.load(Ordering::SeqCst)
            && let Some(ended) = others.iter().find(|w| (w.finished)())
        {
            // Checked again: the thread may have ended because shutdown was requested just now.
            if !shutdown.swap(true, Ordering::SeqCst) {
                return Ended::Unexpectedly(ended.name);
            }
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// The message of a thread's panic, for the log line that says which thread died.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::thread::JoinHandle;

    use super::*;

    /// A thread that runs until `stop` is set.
    fn until(stop: &Arc<AtomicBool>) -> JoinHandle<()> {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }

    #[test]
    fn a_panicking_helper_is_named_and_shutdown_requested() {
        let shutdown = Arc::new(AtomicBool::new(false));
        let poll_loop = until(&shutdown);
        let admin = until(&shutdown);
        let code_sync = std::thread::spawn(|| -> () { panic!("corrupt snapshot") });
        let ended = wait(
            &|| poll_loop.is_finished(),
            &[
                Watched {
                    name: "admin",
                    finished: Box::new(|| admin.is_finished()),
                },
                Watched {
                    name: "code-sync",
                    finished: Box::new(|| code_sync.is_finished()),
                },
            ],
            &shutdown,
        );
        assert_eq!(ended, Ended::Unexpectedly("code-sync"));
        assert!(
            shutdown.load(Ordering::SeqCst),
            "the poll loop is asked to drain"
        );
        let payload = code_sync.join().expect_err("it panicked");
        assert_eq!(panic_message(&*payload), "corrupt snapshot");
        assert!(poll_loop.join().is_ok() && admin.join().is_ok());
    }

    #[test]
    fn helpers_ending_after_a_shutdown_request_are_expected() {
        let shutdown = Arc::new(AtomicBool::new(true));
        let code_sync = std::thread::spawn(|| {});
        while !code_sync.is_finished() {
            std::thread::yield_now();
        }
        // The poll loop drains for a few looks after the helper has ended.
        let looks = std::cell::Cell::new(0);
        let ended = wait(
            &|| {
                looks.set(looks.get() + 1);
                looks.get() > 3
            },
            &[Watched {
                name: "code-sync",
                finished: Box::new(|| code_sync.is_finished()),
            }],
            &shutdown,
        );
        assert_eq!(ended, Ended::PollLoop);
    }

    #[test]
    fn the_poll_loop_ending_is_reported_as_such() {
        let shutdown = Arc::new(AtomicBool::new(false));
        let poll_loop = std::thread::spawn(|| {});
        let admin = until(&shutdown);
        let ended = wait(
            &|| poll_loop.is_finished(),
            &[Watched {
                name: "admin",
                finished: Box::new(|| admin.is_finished()),
            }],
            &shutdown,
        );
        assert_eq!(ended, Ended::PollLoop);
        assert!(!shutdown.load(Ordering::SeqCst));
        shutdown.store(true, Ordering::SeqCst);
        assert!(admin.join().is_ok());
    }
}
