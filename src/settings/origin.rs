//! Where each setting came from, so a problem names its source: the file and line, the
//! environment variable, or the flag.

use std::collections::BTreeMap;
use std::fmt;

use toml::Table;
use toml::de::{DeTable, DeValue};

use super::secret::is_secret_key;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File {
        path: String,
        line: usize,
    },
    Env(String),
    /// The flag as typed, without its value: `--set kafka.delivery`, `--brokers`.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{path} line {line}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The origin of every dotted key set so far; a later source replaces an earlier one.
#[derive(Debug, Default)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    pub fn set(&mut self, dotted: String, origin: Origin) {
        self.0.insert(dotted, origin);
    }

    /// The origin of `dotted` or of the nearest enclosing key that has one.
    pub fn of(&self, dotted: &str) -> Option<&Origin> {
        let mut key = dotted;
        loop {
            if let Some(origin) = self.0.get(key) {
                return Some(origin);
            }
            key = &key[..key.rfind('.')?];
        }
    }

    /// `problem` with the origin of the first settings key it mentions appended.
    pub fn annotate(&self, problem: String) -> String {
        let origin = problem
            .split(|c: char| !(c.is_ascii_alphanumeric() || "_.\"".contains(c)))
            .filter(|word| word.contains('.'))
            .find_map(|word| self.0.get(word.replace('"', "").trim_matches('.')));
        match origin {
            Some(origin) => format!("{problem} (from {origin})"),
            None => problem,
        }
    }
}

/// A settings file parsed, with the line of every key; every syntax error is reported, by
/// line and message only (the offending line is not echoed: it may hold a secret).
pub fn parse_file(
    path: &str,
    text: &str,
    origins: &mut Origins,
    problems: &mut Vec<String>,
) -> Table {
    let (document, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for error in errors {
            let line = error.span().map_or(0, |span| line_of(text, span.start));
            problems.push(format!(
                "{path} line {line}: {} (TOML syntax)",
                error.message().trim()
            ));
        }
        return Table::new();
    }
    record_lines(path, text, document.get_ref(), "", origins);
    match text.parse::<Table>() {
        Ok(table) => table,
        Err(error) => {
            // Unreachable after a clean parse above, but never echo the text.
            let line = error.span().map_or(0, |span| line_of(text, span.start));
            problems.push(format!("{path} line {line}: {}", error.message().trim()));
            Table::new()
        }
    }
}

fn record_lines(path: &str, text: &str, table: &DeTable<'_>, prefix: &str, origins: &mut Origins) {
    for (key, value) in table.iter() {
        let dotted = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let line = line_of(text, key.span().start);
        if let DeValue::Table(inner) = value.get_ref() {
            record_lines(path, text, inner, &dotted, origins);
        }
        origins.set(
            dotted,
            Origin::File {
                path: path.to_string(),
                line,
            },
        );
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A serde message about `dotted`, with the offending value removed when the key is secret:
/// serde echoes values ("invalid type: integer `5`, expected a string").
pub fn scrub(dotted: &str, message: &str) -> String {
    if !is_secret_key(dotted) {
        return message.to_string();
    }
    match message.split_once(", expected ") {
        Some((_, expected)) => {
            format!("invalid value (not shown: the key is secret), expected {expected}")
        }
        None => "invalid value (not shown: the key is secret)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_and_dotted_keys_are_recorded() {
        let text = "[kafka]\nbrokers = \"a\"\n\n[kafka.common]\n\"sasl.password\" = \"x\"\n";
        let mut origins = Origins::default();
        let mut problems = Vec::new();
        parse_file("s.toml", text, &mut origins, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            origins.of("kafka.brokers").map(ToString::to_string),
            Some("s.toml line 2".into())
        );
        assert_eq!(
            origins
                .of("kafka.common.sasl.password")
                .map(ToString::to_string),
            Some("s.toml line 5".into())
        );
    }

    #[test]
    fn syntax_errors_name_the_line_but_not_its_text() {
        let text = "[kafka.common]\nsasl.password = hunter2-secret\n[store]\nredis_url = \n";
        let mut problems = Vec::new();
        parse_file("s.toml", text, &mut Origins::default(), &mut problems);
        let all = problems.join("\n");
        assert!(all.contains("s.toml line 2"), "{all}");
        assert!(all.contains("s.toml line 4"), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
    }
}
