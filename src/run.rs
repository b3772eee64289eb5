//! `promo-attribution run`: wires settings, logging, the admin port, the code table and signal
//! handling around the Kafka poll loop, and turns the outcome into an exit code.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::admin::{AdminLimits, Health, spawn_admin};
use crate::kafka::worker::WorkerDeps;
use crate::kafka::{WorkerExit, run_worker};
use crate::metrics::Metrics;
use crate::redis::code_sync::{self, StartError};
use crate::settings::{CodeSource, Settings};
use crate::supervise::{self, Ended, Watched};
use crate::table_source::{SourceError, load_from_files};

/// Exit codes of `run`: the supervisor restarts on anything but 0.
pub mod exit {
    pub const DRAINED: u8 = 0;
    pub const FATAL: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const DEADLINE: u8 = 3;
}

pub fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&settings.worker.log_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    crate::telemetry::init(settings.worker.log_format, filter);
}

/// Runs the worker until SIGTERM/SIGINT (drain and exit 0) or a fatal failure (exit 1).
pub fn run(settings: Settings) -> ExitCode {
    init_logging(&settings);
    let settings = Arc::new(settings);
    match run_inner(settings) {
        Ok(code) => ExitCode::from(code),
        Err((code, message)) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn run_inner(settings: Arc<Settings>) -> Result<u8, (u8, String)> {
    let metrics = Arc::new(
        Metrics::for_source(settings.codes.effective_source())
            .map_err(|e| (exit::FATAL, format!("metrics: {e}")))?,
    );
    let health = Arc::new(Health::new());
    health.set_stall_after(Duration::from_secs(settings.admin.stall_after_secs));
    let admin_addr = settings
        .admin
        .listen_addr()
        .map_err(|e| (exit::CONFIG, e))?;
    let mut admin = match admin_addr {
        Some(addr) => Some(
            spawn_admin(
                addr,
                metrics.clone(),
                health.clone(),
                AdminLimits::from(&settings.admin),
            )
            .map_err(|e| (exit::CONFIG, e.to_string()))?,
        ),
        None => None,
    };
    if let Some(admin) = &admin {
        tracing::info!(addr = %admin.local_addr(), "admin endpoints: /metrics /healthz /readyz");
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    install_signal_handlers(&shutdown)
        .map_err(|e| (exit::FATAL, format!("signal handlers: {e}")))?;
    start_deadline_watchdog(
        shutdown.clone(),
        Duration::from_secs(settings.worker.shutdown_deadline_secs),
    );

    let mut follower = None;
    let table = match settings.codes.effective_source() {
        CodeSource::Files => {
            let table = load_from_files(&settings.codes).map_err(|e| match e {
                SourceError::Table(inner) => (exit::FATAL, inner.to_string()),
                other => (exit::CONFIG, other.to_string()),
            })?;
            let current = table.current();
            metrics.set_code_table(current.version(), current.len());
            // Loaded once and never stale: the load time is the truthful gauge here, not an age
            // that grows forever (which the staleness alert would take for a stuck sync).
            let loaded_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics.set_code_table_loaded_at(loaded_at);
            health.set_table_loaded(true);
            tracing::info!(
                version = current.version(),
                entries = current.len(),
                "code table loaded from files"
            );
            table
        }
        CodeSource::Redis => {
            tracing::info!(
                redis = %settings.store.redis_url.redacted(),
                prefix = %settings.store.key_prefix,
                "loading the code table from the store"
            );
            match code_sync::start(
                &settings.store,
                settings.codes.build_options(),
                metrics.clone(),
                health.clone(),
                shutdown.clone(),
            ) {
                Ok((table, thread)) => {
                    follower = Some(thread);
                    table
                }
                // Asked to stop while waiting for a table: nothing was read, so nothing to drain.
                Err(StartError::Shutdown) => return Ok(exit::DRAINED),
                Err(other) => return Err((exit::FATAL, other.to_string())),
            }
        }
    };

    // Readiness reports a stale table (crediting paused) even when no batch tries to use it.
    let probed = table.clone();
    health.watch_table(move || probed.check_fresh().err().map(|stale| stale.to_string()));

    let deps = WorkerDeps {
        settings: settings.clone(),
        table,
        metrics,
        health,
        shutdown: shutdown.clone(),
    };
    let worker = std::thread::Builder::new()
        .name("kafka-loop".into())
        .spawn(move || run_worker(deps))
        .map_err(|e| (exit::FATAL, format!("cannot start the poll loop: {e}")))?;
    let mut others = Vec::new();
    if let Some(follower) = &follower {
        others.push(Watched {
            name: code_sync::THREAD,
            finished: Box::new(|| follower.is_finished()),
        });
    }
    if let Some(admin) = &admin {
        others.push(Watched {
            name: "admin",
            finished: Box::new(|| admin.is_finished()),
        });
    }
    let ended = supervise::wait(&|| worker.is_finished(), &others, &shutdown);
    drop(others);
    let died = match ended {
        Ended::PollLoop => None,
        Ended::Unexpectedly(name) => {
            let why = match name {
                code_sync::THREAD => follower.take().map(|t| t.join()),
                _ => admin
                    .take()
                    .map(|a| a.shutdown().map_err(|e| Box::new(e.to_string()) as _)),
            }
            .map_or_else(
                || "ended".to_owned(),
                |joined| match joined {
                    Ok(_) => "returned".to_owned(),
                    Err(payload) => format!("panicked: {}", supervise::panic_message(&*payload)),
                },
            );
            // Which thread, and why, in one line: the exit code alone says only "fatal".
            tracing::error!(
                thread = name,
                "the {name} thread {why}; draining and exiting"
            );
            Some(format!("the {name} thread {why}"))
        }
    };
    let outcome = worker.join().map_err(|payload| {
        let message = supervise::panic_message(&*payload);
        tracing::error!(thread = "kafka-loop", "the poll loop panicked: {message}");
        (exit::FATAL, format!("the poll loop panicked: {message}"))
    })?;
    if let Some(admin) = admin
        && let Err(e) = admin.shutdown()
    {
        tracing::warn!(error = %e, "admin server did not stop cleanly");
    }
    if let Some(died) = died {
        return Err((exit::FATAL, died));
    }
    match outcome {
        Ok(WorkerExit::Drained) => Ok(exit::DRAINED),
        Err(failure) => Err((exit::FATAL, failure.to_string())),
    }
}

/// First SIGTERM/SIGINT: ask the loop to drain. Second: exit at once.
fn install_signal_handlers(shutdown: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(exit::DEADLINE),
            shutdown.clone(),
        )?;
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    Ok(())
}

/// Bounds the drain: a commit stuck on an unreachable broker must not keep a terminating pod
/// alive past its grace period.
fn start_deadline_watchdog(shutdown: Arc<AtomicBool>, deadline: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            while !shutdown.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(deadline);
            eprintln!(
                "error: shutdown did not finish within {} s; exiting",
                deadline.as_secs()
            );
            std::process::exit(i32::from(exit::DEADLINE));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no shutdown deadline watchdog");
    }
}
