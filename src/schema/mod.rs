//! The JSON records the worker reads and writes. Published as JSON Schema under `schema/`.

pub mod adjustment;
pub mod alert;
pub mod alert_detail;
pub mod conversion;
mod json_out;
pub mod number;
pub mod order;
mod order_fast;

pub use adjustment::{AdjustmentKind, AdjustmentRecord, Reason};
pub use alert::{Alert, AlertKind, Severity};
pub use alert_detail::Detail;
pub use conversion::{Basis, ClickRef, CodeRef, Conversion, InvalidReason, Status};
pub use number::JsonNumber;
pub use order::{
    Order, OrderError, Touchpoint, TouchpointKind, ValidOrder, parse_order, parse_order_reference,
};
