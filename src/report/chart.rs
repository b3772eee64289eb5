//! `--chart FILE.svg`: the top codes by revenue, with the share of their conversions that were
//! invalid, readable without the table. Hand-written SVG (a few elements per bar), so the
//! report needs no plotting library; PNG is not offered (convert the SVG if one is needed).

use std::fmt::Write as _;

use super::aggregate::Row;
use super::output::code_of;

/// Bars per currency panel.
const TOP: usize = 10;
const WIDTH: f64 = 1000.0;
const LABEL: f64 = 230.0;
const BAR: f64 = 420.0;
const ROW_HEIGHT: f64 = 26.0;

/// The chart of `--by code` rows: one panel per currency (revenues in different currencies
/// are not comparable), each with its top codes by revenue, largest first.
pub fn svg(rows: &[Row]) -> String {
    let mut currencies: Vec<Option<&str>> = rows.iter().map(|r| r.currency.as_deref()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    let mut body = String::new();
    let mut y = 40.0;
    for currency in currencies {
        let mut top: Vec<&Row> = rows
            .iter()
            .filter(|r| r.currency.as_deref() == currency)
            .collect();
        // Exact order first (revenue as text would sort "9" after "10"), then stable ties.
        top.sort_by(|a, b| {
            b.revenue
                .to_f64_lossy()
                .total_cmp(&a.revenue.to_f64_lossy())
                .then_with(|| (&a.program_id, &a.subject).cmp(&(&b.program_id, &b.subject)))
        });
        top.truncate(TOP);
        let max = top
            .iter()
            .map(|r| r.revenue.to_f64_lossy())
            .fold(0.0, f64::max);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" class="h">Revenue by code, {} (top {})</text>"#,
            escape(currency.unwrap_or("no currency")),
            top.len()
        );
        y += 12.0;
        for row in top {
            y += ROW_HEIGHT;
            bar(&mut body, row, y, max);
        }
        y += 36.0;
    }
    if rows.is_empty() {
        body.push_str(r#"<text x="10" y="40" class="h">No conversions selected</text>"#);
        y = 60.0;
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" viewBox="0 0 {WIDTH} {y}" font-family="sans-serif" font-size="12">
<style>.h{{font-weight:bold;font-size:14px}} .n{{fill:#333}}</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="{legend_x}" y="18" class="n"><tspan fill="#3b6fb6">■</tspan> revenue (credited through the code)   <tspan fill="#d0453a">■</tspan> invalid share of conversions naming it</text>
{body}</svg>
"##,
        legend_x = 10,
    )
}

/// One code: label, revenue bar with its amount, and a 100 % bar split credited / invalid.
fn bar(out: &mut String, row: &Row, y: f64, max: f64) {
    let code = row.subject.as_deref().map(code_of).unwrap_or("-");
    let label = format!("{code} · {}", row.program_id);
    let revenue = row.revenue.to_f64_lossy();
    let length = if max > 0.0 { BAR * revenue / max } else { 0.0 };
    let total = row.credited + row.invalid;
    let invalid_share = if total == 0 {
        0.0
    } else {
        row.invalid as f64 / total as f64
    };
    let share_x = LABEL + BAR + 110.0;
    let share_w = 100.0;
    let top = y - 14.0;
    let _ = writeln!(
        out,
        r##"<text x="{lx}" y="{y}" text-anchor="end">{label}</text>
<rect x="{LABEL}" y="{top}" width="{length:.1}" height="18" fill="#3b6fb6"/>
<text x="{tx:.1}" y="{y}" class="n">{revenue}</text>
<rect x="{share_x}" y="{top}" width="{share_w}" height="18" fill="#cfe0c3"/>
<rect x="{share_x}" y="{top}" width="{iw:.1}" height="18" fill="#d0453a"/>
<text x="{px}" y="{y}" class="n">{pct:.0}% invalid ({invalid}/{total})</text>"##,
        lx = LABEL - 8.0,
        label = escape(&label),
        tx = LABEL + length + 6.0,
        revenue = row.revenue,
        iw = share_w * invalid_share,
        px = share_x + share_w + 6.0,
        pct = invalid_share * 100.0,
        invalid = row.invalid,
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{Aggregator, By, Selection};
    use super::*;

    #[test]
    fn chart_names_each_code_with_its_revenue_and_invalid_share() {
        let mut agg = Aggregator::new(By::Code, Selection::default());
        let credited = r#"{"event_id":"1","program_id":"1001","event_time":"2026-01-01T00:00:00Z","status":"CREDITED","basis":"CODE_ALWAYS","partner_id":"P","code":{"code_id":"LI:A<B","owner_partner_id":"P"},"amount":19.99,"currency":"USD"}"#;
        let invalid = credited
            .replace(r#""event_id":"1""#, r#""event_id":"2""#)
            .replace(r#""status":"CREDITED""#, r#""status":"INVALID""#)
            .replace(
                r#""basis":"CODE_ALWAYS""#,
                r#""invalid_reason":"CODE_EXPIRED""#,
            );
        agg.add(credited.as_bytes()).expect("counts");
        agg.add(invalid.as_bytes()).expect("counts");
        let svg = svg(&agg.finish().0);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("A&lt;B · 1001"), "{svg}");
        assert!(svg.contains(">19.99<"), "{svg}");
        assert!(svg.contains("50% invalid (1/2)"), "{svg}");
        assert!(svg.contains("Revenue by code, USD"), "{svg}");
    }
}
