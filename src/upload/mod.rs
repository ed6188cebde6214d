//! Delivery of profiles to a backend: one file per protocol behind the
//! [`Uploader`] trait, with retries, a bounded queue and an on-disk spool
//! in between, so that a slow or dead backend never blocks sampling and
//! nothing collected is lost.

mod types;

pub use types::*;
