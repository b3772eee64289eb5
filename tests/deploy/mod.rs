//! The deployment checks, by subject; shared helpers in [`helpers`].

mod compose;
mod dashboard;
mod dockerfile;
mod helpers;
mod kubernetes;
mod live;
mod prometheus_rules;
mod quiet_rules;
