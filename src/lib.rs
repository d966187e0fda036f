//! imagefs: every Glance store as one FUSE tree, `/images/<store>/<image-id>`.

pub mod config;
