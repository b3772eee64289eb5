//! CSV injection: a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is run
//! as a formula by spreadsheet programs (`=cmd|' /C calc'!A0`, `@SUM(1+1)`). `codes export`
//! writes codes verbatim so that `codes import` reads them back unchanged, so such text is kept
//! out of the store at import instead of being escaped on the way out (an escaped code would be
//! a different code when read back).
//!
//! Tables published before this rule still load (a worker must not refuse a version it used to
//! accept); only new imports and edits are checked.

use super::load::LoadProblem;
use super::{CodeEntry, Partner};

/// The characters a cell may not start with.
pub const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

fn starts_like_a_formula(text: &str) -> bool {
    text.starts_with(FORMULA_STARTS)
}

fn problem(origin: &str, line: u64, column: &str) -> LoadProblem {
    LoadProblem {
        origin: origin.to_string(),
        line,
        column: Some(column.to_string()),
        reason:
            "starts with =, +, -, @, a tab or a carriage return, which a spreadsheet runs as a \
                 formula (CSV injection); such values are refused"
                .into(),
    }
}

/// Every cell of the codes that a spreadsheet would read as a formula.
pub fn code_problems(entries: &[CodeEntry], origin: &str) -> Vec<LoadProblem> {
    let mut problems = Vec::new();
    for entry in entries {
        let cells = [
            ("Promo Code", Some(&*entry.code)),
            ("Program Id", Some(&*entry.program_id)),
            ("Media Id", entry.owner_partner_id.as_deref()),
            ("Deal Id", entry.deal_id.as_deref()),
        ];
        for (column, value) in cells {
            if value.is_some_and(starts_like_a_formula) {
                problems.push(problem(origin, u64::from(entry.source_line), column));
            }
        }
    }
    problems
}

/// Partner ids a spreadsheet would read as a formula; `lines` are the partners' file lines.
pub fn partner_problems(partners: &[Partner], origin: &str) -> Vec<LoadProblem> {
    partners
        .iter()
        .enumerate()
        .filter(|(_, p)| starts_like_a_formula(&p.partner_id))
        // Partners keep no line; the header is line 1 and blank rows are rare in exports.
        .map(|(i, _)| problem(origin, i as u64 + 2, "Partner Id"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::export::write_codes;
    use crate::codes::load::read_codes;

    const HEADER: &str = "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode,Deal Id\n";

    #[test]
    fn formula_like_cells_are_refused_and_named() {
        let body = "\
\"=cmd|' /C calc'!A0\",1,5,TRACKING,ALWAYS,LI,
@SUM(1+1),1,5,TRACKING,ALWAYS,LI,
+1+1,1,5,TRACKING,ALWAYS,LI,
-2,1,5,TRACKING,ALWAYS,LI,
SAFE,1,=HYPERLINK(1),TRACKING,ALWAYS,LI,
SAFE2,1,5,TRACKING,ALWAYS,LI,@x
A-B+C=D@E,1,5,TRACKING,ALWAYS,LI,
";
        let entries = read_codes(format!("{HEADER}{body}").as_bytes(), "c.csv").expect("rows");
        let problems = code_problems(&entries, "c.csv");
        let found: Vec<(u64, Option<&str>)> = problems
            .iter()
            .map(|p| (p.line, p.column.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                (2, Some("Promo Code")),
                (3, Some("Promo Code")),
                (4, Some("Promo Code")),
                (5, Some("Promo Code")),
                (6, Some("Media Id")),
                (7, Some("Deal Id")),
            ]
        );
        assert!(problems[0].to_string().contains("CSV injection"));
        assert!(!problems[0].to_string().contains("calc"), "no value echoed");
    }

    #[test]
    fn accepted_codes_export_verbatim_and_read_back_unchanged() {
        let body = "A-B+C=D@E,1,5,TRACKING,ALWAYS,LI,7\n\"SAVE,10\",1,5,TRACKING,ALWAYS,LI,\n";
        let entries = read_codes(format!("{HEADER}{body}").as_bytes(), "c.csv").expect("rows");
        assert!(code_problems(&entries, "c.csv").is_empty());
        let mut exported = Vec::new();
        write_codes(&mut exported, &entries).expect("export");
        let back = read_codes(exported.as_slice(), "export").expect("reads back");
        let codes: Vec<&str> = back.iter().map(|e| &*e.code).collect();
        assert_eq!(codes, ["A-B+C=D@E", "SAVE,10"]);
        assert!(
            String::from_utf8_lossy(&exported)
                .lines()
                .skip(1)
                .all(|line| !line.starts_with(FORMULA_STARTS))
        );
    }
}
