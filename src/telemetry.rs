//! The worker's log output, on stderr: text for a person at a terminal, JSON for a collector.
//!
//! Colour codes only reach a terminal: a log file or a collector reading a pipe gets plain text
//! (and JSON never has them). A JSON line is one flat object: the service and its version first,
//! then the event's own fields next to `message`, so a collector can index `service`, `version`
//! and every field without digging into a nested `fields` object.

use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::LogFormat;

/// The `service` of every JSON log line.
pub const SERVICE: &str = "promo-attribution";

/// Whether text logs get colour: only on a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>).
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The subscriber writing to `writer`; a parameter so tests can read what it writes.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(WithService(Format::default().json().flatten_event(true)))
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}

/// Installs the worker's subscriber on stderr, and routes `log` records of dependencies into
/// it. A second call (several workers in one test process) keeps the first.
pub fn init(format: LogFormat, filter: EnvFilter) {
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = subscriber(format, filter, ansi, std::io::stderr).try_init();
}

/// tracing-subscriber's flattened JSON line with `service` and `version` in front.
struct WithService(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithService
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                r#"{{"service":"{SERVICE}","version":"{}",{rest}"#,
                env!("CARGO_PKG_VERSION")
            ),
            // Not an object: nothing to add to, so it is passed on as it is.
            None => writer.write_str(&line),
        }
    }
}

/// What a subscriber writes, for tests here and of the events that log.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `emit` under the worker's subscriber (`format`, `filter`, colour or not) and
    /// returns what it wrote.
    pub(crate) fn logged(
        format: LogFormat,
        filter: &str,
        ansi: bool,
        emit: impl FnOnce(),
    ) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = subscriber(format, EnvFilter::new(filter), ansi, move || writer.clone());
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(format: LogFormat, ansi: bool) -> String {
        capture::logged(format, "info", ansi, || {
            tracing::warn!(addr = "127.0.0.1:9464", partitions = 3, "admin endpoints");
        })
    }
    #[test]
    fn json_lines_carry_service_and_version_with_the_event_fields_at_top_level() {
        let text = logged(LogFormat::Json, true);
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["service"], SERVICE, "{text}");
        assert_eq!(line["version"], env!("CARGO_PKG_VERSION"), "{text}");
        assert_eq!(line["message"], "admin endpoints", "{text}");
        assert_eq!(line["addr"], "127.0.0.1:9464", "{text}");
        assert_eq!(line["partitions"], 3, "{text}");
        assert_eq!(line["level"], "WARN", "{text}");
        assert!(line.get("fields").is_none(), "fields nested: {text}");
        assert!(text.starts_with(r#"{"service":"#), "{text}");
        assert!(!text.contains('\x1b'), "colour codes in JSON: {text:?}");
    }

    #[test]
    fn text_logs_have_colour_codes_only_when_asked() {
        let plain = logged(LogFormat::Text, false);
        assert!(plain.contains("admin endpoints"), "{plain}");
        assert!(!plain.contains('\x1b'), "colour codes: {plain:?}");
        assert!(logged(LogFormat::Text, true).contains('\x1b'));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".as_ref())));
        // NO_COLOR set but empty does not count (no-color.org).
        assert!(colour(true, Some("".as_ref())));
    }
}
