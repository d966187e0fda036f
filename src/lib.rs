//! imagefs: every Glance store as one FUSE tree, `/images/<store>/<image-id>`.

pub mod admin;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod mount_opts;
pub mod store;
