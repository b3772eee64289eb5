//! The indexes that find which code-table entries an entered code matches, per program.

pub mod exact;
mod line_map;
mod literal_index;
mod prefilter;
pub mod regex_index;
mod shape;

pub use exact::ExactIndex;
pub use regex_index::{DEFAULT_REGEX_SIZE_LIMIT, IndexedBy, RegexIndex};

/// Both indexes of one program.
#[derive(Default)]
pub struct ProgramMatcher {
    pub exact: ExactIndex,
    pub regex: RegexIndex,
}
