//! `--format table|json|csv` for the read-only commands: one set of rows, three renderings.
//! The table sizes each column to its widest cell, so long codes do not break the layout.

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a person.
    #[default]
    Table,
    /// One JSON array of objects keyed by the column names (lower case).
    Json,
    /// CSV with a header row.
    Csv,
}

/// Rows under `headers`, rendered in `format`.
pub fn render(format: OutputFormat, headers: &[&str], rows: &[Vec<String>]) -> String {
    match format {
        OutputFormat::Table => table(headers, rows),
        OutputFormat::Json => json(headers, rows),
        OutputFormat::Csv => csv_text(headers, rows),
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn json(headers: &[&str], rows: &[Vec<String>]) -> String {
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .iter()
        .map(|row| {
            headers
                .iter()
                .zip(row)
                .map(|(h, cell)| (h.to_lowercase(), serde_json::Value::String(cell.clone())))
                .collect()
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&objects).unwrap_or_else(|_| "[]".into());
    text.push('\n');
    text
}

fn csv_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(headers);
    for row in rows {
        let _ = writer.write_record(row);
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_renderings_agree() {
        let rows = vec![
            vec![
                "A-VERY-LONG-CODE-THAT-WOULD-BREAK-A-FIXED-WIDTH".to_string(),
                "x".into(),
            ],
            vec!["B".to_string(), "y, z".into()],
        ];
        let table = render(OutputFormat::Table, &["CODE", "NOTE"], &rows);
        assert!(
            table.starts_with("CODE                                             NOTE\n"),
            "{table}"
        );
        let csv = render(OutputFormat::Csv, &["CODE", "NOTE"], &rows);
        assert!(csv.contains("B,\"y, z\"\n"), "{csv}");
        let json: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &["CODE", "NOTE"], &rows))
                .unwrap_or_default();
        assert_eq!(json[1]["note"], "y, z");
    }
}
