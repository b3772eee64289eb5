//! One module per detector, or per family of detectors that share their counts, each with its
//! planning part (what an order adds to the state) and its reporting part (from the counts to
//! findings). [`super::plan`] and [`super::report`] walk them in a fixed order.

pub mod customer_limit;
pub mod duplicate_order;
pub mod enumeration;
pub mod limit;
pub mod recent_uses;
pub mod reversal_rate;
pub mod self_referral;
pub mod unknown_rate;
pub mod usage_limit;
