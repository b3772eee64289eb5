//! Progress of the long phases of a `codes` command (read, validate, diff, upload): a bar or a
//! spinner with counts and rates on a terminal, and one summary line per phase on stderr
//! whatever stderr is, so a million-row import never goes quiet for seconds.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub(super) struct Phase {
    bar: ProgressBar,
    name: &'static str,
    started: Instant,
}

impl Phase {
    /// A phase that reads `total` bytes; wrap the reader with [`Phase::wrap`].
    pub(super) fn bytes(name: &'static str, total: u64) -> Phase {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(name);
        Phase::with(bar, name)
    }

    /// A phase without a known size: a spinner with the elapsed time.
    pub(super) fn spinner(name: &'static str, what: String) -> Phase {
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(format!("{name} {what}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        Phase::with(bar, name)
    }

    fn with(bar: ProgressBar, name: &'static str) -> Phase {
        Phase {
            bar,
            name,
            started: Instant::now(),
        }
    }

    pub(super) fn wrap<R: std::io::Read>(&self, reader: R) -> indicatif::ProgressBarIter<R> {
        self.bar.wrap_read(reader)
    }

    /// Ends the phase with "NAME COUNT WHAT in S s (RATE WHAT/s)".
    pub(super) fn done(self, count: usize, what: &str) {
        self.bar.finish_and_clear();
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            format!(", {:.0} {what}/s", count as f64 / seconds)
        } else {
            String::new()
        };
        eprintln!("{} {count} {what} in {seconds:.1} s{rate}", self.name);
    }
}
