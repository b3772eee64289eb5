//! A version of the code table as the store keeps it: the codes and partners in the same CSV
//! format `codes export` writes (so the worker reads them with the same validating loader the
//! offline mode uses) and the per-program settings as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codes::export::{write_codes, write_partners};
use crate::codes::load::{CODE_COLUMNS, LoadProblem, read_codes_lenient, read_partners};
use crate::codes::table::BuildOptions;
use crate::codes::{CodeEntry, CodeTable, LoadProblems, Partner};
use crate::ids::content_fingerprint;
use crate::settings::detectors::ProgramSettings;

/// Rows per stored chunk: about 5 MB of CSV, so a version of a million codes is a hash of a few
/// dozen fields, which Redis frees at once, and no single value nears Redis's 512 MB limit.
pub const ROWS_PER_CHUNK: usize = 50_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub entries: Vec<CodeEntry>,
    pub partners: Vec<Partner>,
    pub programs: BTreeMap<String, ProgramSettings>,
}

/// The stored form of a [`Snapshot`].
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// CSV; the first chunk carries the header, so the chunks concatenated are one file.
    pub code_chunks: Vec<Vec<u8>>,
    pub partners: Vec<u8>,
    pub programs: Vec<u8>,
}

/// What a version record says about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub version: u64,
    /// The version this one was made from (`None` for the first).
    pub base: Option<u64>,
    pub published_at: String,
    pub author: String,
    pub command: String,
    /// Why, as the author said it (`--reason`); absent in versions published without one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub summary: String,
    pub codes: usize,
    pub partners: usize,
    pub programs: usize,
    pub chunks: usize,
    /// When the publish script ran, in Unix milliseconds by Redis's clock; set by the store, not
    /// part of the stored meta.
    #[serde(skip)]
    pub published_ms: Option<i64>,
    /// The rows a single-code edit changed (in export column order), so a worker holding `base`
    /// can apply them without reloading the whole table. Empty for bulk changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta: Vec<Vec<String>>,
    /// The store's generation when this version was published (see the store's module docs).
    /// Absent in versions published before generations existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// [`Encoded::fingerprint`] of the content; checked on every load. Absent in versions
    /// published before fingerprints existed (computed at load for those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl VersionMeta {
    /// The `code_table_version` outputs carry for this version: the store's version number, then
    /// the content fingerprint, so two different contents that were both published as version N
    /// (a wiped store re-imported, an older backup restored) never share a name.
    pub fn table_version(version: u64, fingerprint: &str) -> String {
        format!("{version}-{fingerprint}")
    }

    /// The store version number a `code_table_version` names (the part before the dash; a
    /// bare number as written before fingerprints were added is accepted too).
    pub fn version_number(table_version: &str) -> Option<u64> {
        table_version.split('-').next()?.parse().ok()
    }
}

impl Encoded {
    /// Identifies the content: the codes (all chunks as one file), the partners and the
    /// programs.
    pub fn fingerprint(&self) -> String {
        let chunks: Vec<&[u8]> = self.code_chunks.iter().map(Vec::as_slice).collect();
        content_fingerprint(&[&chunks, &[&self.partners], &[&self.programs]])
    }
}

impl Snapshot {
    pub fn encode(&self) -> Result<Encoded, csv::Error> {
        let mut code_chunks = Vec::new();
        if self.entries.is_empty() {
            let mut header_only = Vec::new();
            write_codes(&mut header_only, &[])?;
            code_chunks.push(header_only);
        }
        for (index, rows) in self.entries.chunks(ROWS_PER_CHUNK).enumerate() {
            let mut chunk = Vec::with_capacity(rows.len() * 96);
            write_codes(&mut chunk, rows)?;
            if index > 0 {
                // Only the first chunk keeps the header line.
                let body = chunk
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(chunk.len(), |end| end + 1);
                chunk.drain(..body);
            }
            code_chunks.push(chunk);
        }
        let mut partners = Vec::new();
        write_partners(&mut partners, &self.partners)?;
        let programs = serde_json::to_vec(&self.programs).map_err(std::io::Error::other)?;
        Ok(Encoded {
            code_chunks,
            partners,
            programs,
        })
    }

    /// Reads a stored version back, with the loader's full validation; `origin` names it in
    /// problems.
    pub fn decode(
        codes_csv: impl std::io::Read,
        partners_csv: &[u8],
        programs_json: &[u8],
        origin: &str,
    ) -> Result<Snapshot, LoadProblems> {
        let (entries, mut problems) = read_codes_lenient(codes_csv, &format!("{origin}/codes"));
        let partners =
            read_partners(partners_csv, &format!("{origin}/partners")).unwrap_or_else(|invalid| {
                problems.extend(invalid.0);
                Vec::new()
            });
        let programs = parse_programs(programs_json, origin).unwrap_or_else(|problem| {
            problems.push(problem);
            BTreeMap::new()
        });
        if problems.is_empty() {
            Ok(Snapshot {
                entries,
                partners,
                programs,
            })
        } else {
            Err(LoadProblems(problems))
        }
    }

    /// Indexes the snapshot as table `version`, reporting duplicate codes and bad patterns.
    pub fn build(self, version: &str, origin: &str) -> Result<CodeTable, LoadProblems> {
        self.build_with(version, origin, BuildOptions::default())
    }

    /// [`Snapshot::build`] under the given options (the matcher budget of the settings).
    pub fn build_with(
        self,
        version: &str,
        origin: &str,
        options: BuildOptions,
    ) -> Result<CodeTable, LoadProblems> {
        let table = CodeTable::build(self.entries, self.partners, version, origin, options)?;
        Ok(table.with_program_settings(self.programs))
    }
}

/// Reads encoded code chunks as one CSV text without joining them into a copy.
pub struct ChunksReader<'c> {
    rest: &'c [Vec<u8>],
    offset: usize,
}

impl<'c> ChunksReader<'c> {
    pub fn new(chunks: &'c [Vec<u8>]) -> Self {
        ChunksReader {
            rest: chunks,
            offset: 0,
        }
    }
}

impl std::io::Read for ChunksReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some((chunk, later)) = self.rest.split_first() {
            let left = chunk.get(self.offset..).unwrap_or_default();
            if left.is_empty() {
                self.rest = later;
                self.offset = 0;
                continue;
            }
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.offset += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// The rows of a [`VersionMeta::delta`], read with the loader's checks.
pub fn decode_delta(rows: &[Vec<String>], origin: &str) -> Result<Vec<CodeEntry>, LoadProblems> {
    let mut csv_text = Vec::new();
    {
        let mut writer = csv::Writer::from_writer(&mut csv_text);
        let written = std::iter::once(CODE_COLUMNS.iter().map(|c| c.to_string()).collect())
            .chain(rows.iter().cloned())
            .try_for_each(|row: Vec<String>| writer.write_record(&row));
        if let Err(e) = written.and_then(|()| writer.flush().map_err(csv::Error::from)) {
            return Err(LoadProblems(vec![LoadProblem {
                origin: origin.to_string(),
                line: 0,
                column: None,
                reason: format!("delta rows: {e}"),
            }]));
        }
    }
    crate::codes::load::read_codes(csv_text.as_slice(), origin)
}

pub fn parse_programs(
    json: &[u8],
    origin: &str,
) -> Result<BTreeMap<String, ProgramSettings>, LoadProblem> {
    if json.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_slice(json).map_err(|e| LoadProblem {
        origin: origin.to_string(),
        line: e.line() as u64,
        column: None,
        reason: format!("program settings: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::load::read_codes;

    #[test]
    fn chunks_concatenate_to_one_file() {
        let mut body = String::from("Promo Code,Program Id,Media Id,Type,Credit Rule\n");
        for i in 0..(ROWS_PER_CHUNK + 10) {
            body.push_str(&format!("C{i},1,p1,TRACKING,ALWAYS\n"));
        }
        let entries = read_codes(body.as_bytes(), "t.csv").expect("valid");
        let snapshot = Snapshot {
            entries,
            ..Snapshot::default()
        };
        let encoded = snapshot.encode().expect("encode");
        assert_eq!(encoded.code_chunks.len(), 2);
        let joined: Vec<u8> = encoded.code_chunks.concat();
        let mut streamed = Vec::new();
        std::io::Read::read_to_end(&mut ChunksReader::new(&encoded.code_chunks), &mut streamed)
            .expect("read");
        assert_eq!(streamed, joined, "the chunks read as their concatenation");
        let decoded = Snapshot::decode(
            ChunksReader::new(&encoded.code_chunks),
            encoded.partners.as_slice(),
            &encoded.programs,
            "test",
        )
        .expect("ok");
        assert_eq!(decoded.entries.len(), ROWS_PER_CHUNK + 10);
        assert_eq!(decoded.entries[ROWS_PER_CHUNK + 9].code.as_ref(), "C50009");
    }

    #[test]
    fn an_empty_table_round_trips() {
        let encoded = Snapshot::default().encode().expect("encode");
        let joined = encoded.code_chunks.concat();
        let decoded = Snapshot::decode(
            joined.as_slice(),
            &encoded.partners,
            &encoded.programs,
            "test",
        )
        .expect("ok");
        assert_eq!(decoded, Snapshot::default());
    }
}
