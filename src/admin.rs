//! `imagefs check` and `imagefs gc`: operator commands that talk to the
//! stores directly, without mounting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{Store, UploadMode};

/// One row of `imagefs check`.
#[derive(Debug)]
pub struct CheckRow {
    pub store: String,
    pub kind: String,
    pub reachable: Result<usize, String>,
    pub writable: Result<(), String>,
    pub capacity: Option<(u64, u64)>,
    pub latency: Duration,
}

/// Lists, probes a write (an upload that is aborted, so nothing appears),
/// and reads capacity, for one store.
pub async fn check_store(store: &Arc<dyn Store>) -> CheckRow {
    let start = Instant::now();
    let reachable = store
        .list()
        .await
        .map(|l| l.len())
        .map_err(|e| e.to_string());
    let latency = start.elapsed();
    let writable = if store.capabilities().read_only {
        Err("read-only store".to_string())
    } else if reachable.is_err() {
        Err("unreachable".to_string())
    } else {
        probe_write(store).await
    };
    let capacity = store
        .statfs()
        .await
        .ok()
        .filter(|s| s.total_bytes > 0)
        .map(|s| (s.avail_bytes, s.total_bytes));
    CheckRow {
        store: store.name().to_string(),
        kind: store.type_name().to_string(),
        reachable,
        writable,
        capacity,
        latency,
    }
}

async fn probe_write(store: &Arc<dyn Store>) -> Result<(), String> {
    let id = format!("imagefs-check-{}", std::process::id());
    let mut up = store
        .create_upload(&id, UploadMode::New)
        .await
        .map_err(|e| e.to_string())?;
    let wrote = up.write_at(0, Bytes::from_static(b"imagefs")).await;
    up.abort().await.map_err(|e| e.to_string())?;
    wrote.map_err(|e| e.to_string())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The table `imagefs check` prints.
pub fn format_table(rows: &[CheckRow]) -> String {
    let mut out = format!(
        "{:<16} {:<7} {:<22} {:<22} {:<24} {:>9}\n",
        "STORE", "TYPE", "REACHABLE", "WRITABLE", "CAPACITY (avail/total)", "LATENCY"
    );
    for r in rows {
        let reach = match &r.reachable {
            Ok(n) => format!("yes ({n} images)"),
            Err(e) => format!("NO: {e}"),
        };
        let write = match &r.writable {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("no: {e}"),
        };
        let cap = r
            .capacity
            .map(|(a, t)| format!("{} / {}", human(a), human(t)))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<16} {:<7} {:<22} {:<22} {:<24} {:>7.1}ms\n",
            r.store,
            r.kind,
            reach,
            write,
            cap,
            r.latency.as_secs_f64() * 1000.0
        ));
    }
    out
}

/// Runs gc on every store and prints what it found.
pub async fn gc(
    stores: &[Arc<dyn Store>],
    older_than: Duration,
    dry_run: bool,
) -> Result<(), String> {
    let mut failed = Vec::new();
    let mut total = 0;
    for s in stores {
        match s.gc(older_than, dry_run).await {
            Ok(found) => {
                for l in found {
                    total += 1;
                    let what = if dry_run {
                        "would remove"
                    } else if l.removed {
                        "removed"
                    } else {
                        "could not remove"
                    };
                    println!(
                        "{}: {what} {} ({}, {} old)",
                        s.name(),
                        l.name,
                        human(l.bytes),
                        humantime::format_duration(Duration::from_secs(l.age.as_secs()))
                    );
                }
            }
            Err(e) => failed.push(format!("{}: {e}", s.name())),
        }
    }
    println!(
        "{total} leftover(s) {}",
        if dry_run { "found" } else { "handled" }
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
