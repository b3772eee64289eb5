//! The report's rows as a table (for a terminal), CSV or JSON. Pure: rows in, bytes out.
//!
//! The `--by code --format json` shape is a contract with reporting pipelines (README,
//! "Reporting"): an array of objects with the fields below; fields may be added, never renamed.

use std::io::Write;

use serde_json::{Value, json};

use super::aggregate::{By, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for a terminal.
    Table,
    Csv,
    Json,
}

/// The normalised code or pattern of a `code_id` (`LI:ANNA10` → `ANNA10`).
pub fn code_of(code_id: &str) -> &str {
    code_id
        .strip_prefix("LI:")
        .or_else(|| code_id.strip_prefix("RE:"))
        .unwrap_or(code_id)
}

/// The fields of a row, in contract order; with adjustments netted, three more at the end.
pub fn columns(by: By, netted: bool) -> Vec<&'static str> {
    const CREDIT: [&str; 6] = [
        "credited",
        "revenue",
        "discount",
        "credited_without_amount",
        "invalid",
        "invalid_by_reason",
    ];
    let (subject, tail): (&[&str], &[&str]) = match by {
        By::Code => (&["code_id", "code", "owner_partner_id"], &CREDIT),
        By::Partner => (&["partner_id"], &CREDIT),
        By::Reason => (
            &["invalid_reason"],
            &["invalid", "amount", "discount", "without_amount"],
        ),
    };
    let mut all = vec!["program_id"];
    all.extend_from_slice(subject);
    all.push("currency");
    all.extend_from_slice(tail);
    if netted && by != By::Reason {
        all.extend_from_slice(&["reversed", "reversed_amount", "net_revenue"]);
    }
    all
}

/// One row's values, index-aligned with [`columns`].
fn values(by: By, netted: bool, row: &Row) -> Vec<Value> {
    let (reversed, reversed_amount) = row.reversed.unwrap_or_default();
    columns(by, netted)
        .iter()
        .map(|column| match *column {
            "program_id" => json!(row.program_id),
            "code_id" | "partner_id" | "invalid_reason" => json!(row.subject),
            "code" => json!(row.subject.as_deref().map(code_of)),
            "owner_partner_id" => json!(row.owner_partner_id),
            "currency" => json!(row.currency),
            "credited" => json!(row.credited),
            // Decimal strings: a JSON number would invite readers to parse money as a float.
            "revenue" | "amount" => json!(row.revenue.to_string()),
            "discount" => json!(row.discount.to_string()),
            "credited_without_amount" | "without_amount" => json!(row.without_amount),
            "invalid" => json!(row.invalid),
            "reversed" => json!(reversed),
            "reversed_amount" => json!(reversed_amount.to_string()),
            "net_revenue" => json!(row.net_revenue().map(|d| d.to_string())),
            _ => json!(row.invalid_by_reason),
        })
        .collect()
}

/// A row as a JSON object whose keys keep the contract order.
struct Ordered<'a>(&'a [&'static str], &'a [Value]);

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0.iter().zip(self.1) {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `netted`: adjustments were read (the rows carry reversals); adds their columns.
pub fn write(
    out: &mut dyn Write,
    by: By,
    netted: bool,
    format: Format,
    rows: &[Row],
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let all: Vec<Vec<Value>> = rows.iter().map(|r| values(by, netted, r)).collect();
            let names = columns(by, netted);
            let array: Vec<Ordered<'_>> = all.iter().map(|v| Ordered(&names, v)).collect();
            serde_json::to_writer_pretty(&mut *out, &array)?;
            writeln!(out)
        }
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record(columns(by, netted))?;
            for row in rows {
                csv.write_record(values(by, netted, row).iter().map(cell))?;
            }
            csv.flush()
        }
        Format::Table => write_table(out, by, netted, rows),
    }
}

/// A CSV or table cell: strings bare, null empty, `invalid_by_reason` as `REASON=n;REASON=n`.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    }
}

fn write_table(out: &mut dyn Write, by: By, netted: bool, rows: &[Row]) -> std::io::Result<()> {
    let header = columns(by, netted);
    // `code_id` repeats `code` with its prefix; a terminal has no room for it.
    let shown: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != "code_id")
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let values = values(by, netted, r);
            values
                .iter()
                .map(|v| if v.is_null() { "-".into() } else { cell(v) })
                .collect()
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let numeric = |i: usize| {
        [
            "credited",
            "revenue",
            "amount",
            "discount",
            "credited_without_amount",
            "without_amount",
            "invalid",
            "reversed",
            "reversed_amount",
            "net_revenue",
        ]
        .contains(&header[i])
    };
    let line = |values: &[String]| {
        let mut text = String::new();
        for (n, &i) in shown.iter().enumerate() {
            if n > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(values[i].chars().count());
            let last = n + 1 == shown.len();
            if numeric(i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(&values[i]);
            } else {
                text.push_str(&values[i]);
                if !last {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        // An empty last cell would leave trailing spaces, which only make copied text ragged.
        text.trim_end().to_owned()
    };
    let header_text: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    writeln!(out, "{}", line(&header_text))?;
    for row in &cells {
        writeln!(out, "{}", line(row))?;
    }
    if cells.is_empty() {
        writeln!(out, "(no conversions selected)")?;
    }
    Ok(())
}
