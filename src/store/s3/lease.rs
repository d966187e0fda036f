//! Leases: what this process is using in the bucket that `gc` would
//! otherwise take for a dead writer's leftovers (claims of new ids,
//! multipart upload ids, hidden copies of unlinked objects its readers
//! hold). The names are kept in one small object, `.imagefs-live/<token>`,
//! that a task rewrites while anything is held and deletes when nothing
//! is, so `imagefs gc` run by any process on any node spares them. A lease
//! not rewritten for `Timing::expiry` is a dead process's, and no longer
//! protects anything; so is one whose first line names a process of this
//! host and boot that is gone (gc on the node where a daemon crashed needs
//! not wait for the expiry).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::Notify;

use super::error::s3err;
use super::object::{self, Bucket};

/// Where leases live: a "directory", so listings of images (delimiter
/// `/`) never see them.
pub const PREFIX: &str = ".imagefs-live/";

/// How leases are kept.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Changes are written at most this often (uploads shorter than this
    /// never write a lease).
    pub settle: Duration,
    /// A lease is rewritten at least this often while anything is held.
    pub renew: Duration,
    /// A lease older than this is a dead process's.
    pub expiry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            settle: Duration::from_secs(5),
            renew: Duration::from_secs(60),
            expiry: Duration::from_secs(600),
        }
    }
}

/// The names this process holds, and the task that publishes them.
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    timing: Timing,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    names: HashSet<String>,
    /// Whether the publishing task runs.
    running: bool,
}

impl Live {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, token: &str, timing: Timing) -> Live {
        Live {
            inner: Arc::new(Inner {
                client,
                bucket,
                key: format!("{PREFIX}{token}"),
                timing,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// This process's lease object.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// `name` is in use: published within `settle`, kept until `remove`.
    pub fn insert(&self, name: &str) {
        let start = {
            let mut st = self.inner.state.lock().unwrap();
            st.names.insert(name.to_string());
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(publish(self.inner.clone()));
                }
                Err(_) => {
                    // Only outside the daemon (no runtime): nothing to
                    // protect from another process's gc for long.
                    self.inner.state.lock().unwrap().running = false;
                }
            }
        } else {
            self.inner.changed.notify_one();
        }
    }

    pub fn remove(&self, name: &str) {
        self.inner.state.lock().unwrap().names.remove(name);
        self.inner.changed.notify_one();
    }

    /// The names held now.
    pub fn names(&self) -> HashSet<String> {
        self.inner.state.lock().unwrap().names.clone()
    }
}

/// Keeps the lease object equal to the names held: written when they
/// changed (after `settle`, so a burst of changes is one write) and every
/// `renew`, deleted when none are left; then the task ends. A failed
/// write or delete (the server is down) is tried again at the next change
/// or after `renew`, so an outage logs one warning a minute.
async fn publish(inner: Arc<Inner>) {
    let t = inner.timing;
    // What the object holds now (None: there is none).
    let mut published: Option<Vec<String>> = None;
    let mut attempted = Instant::now();
    loop {
        tokio::time::sleep(t.settle).await;
        let names = {
            let mut st = inner.state.lock().unwrap();
            if st.names.is_empty() && published.is_none() {
                st.running = false;
                return;
            }
            let mut v: Vec<String> = st.names.iter().cloned().collect();
            v.sort();
            v
        };
        if published.as_ref() != Some(&names) || attempted.elapsed() >= t.renew {
            attempted = Instant::now();
            let r = if names.is_empty() {
                inner
                    .client
                    .delete_object()
                    .bucket(&inner.bucket)
                    .key(&inner.key)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(s3err)
            } else {
                let body = format!("{}\n{}\n", this_process(), names.join("\n"));
                inner
                    .client
                    .put_object()
                    .bucket(&inner.bucket)
                    .key(&inner.key)
                    .content_type("text/plain")
                    .body(ByteStream::from(body.into_bytes()))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(s3err)
            };
            match r {
                Ok(()) if names.is_empty() => {
                    published = None;
                    continue; // ends unless something was taken meanwhile
                }
                Ok(()) => published = Some(names),
                Err(e) => {
                    tracing::warn!(key = %inner.key, "keeping this process's lease: {}", e.message)
                }
            }
        }
        let wait = t.renew.saturating_sub(attempted.elapsed()).max(t.settle);
        tokio::select! {
            _ = inner.changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the leases in the bucket protect: the names listed by every lease
/// younger than `expiry` (`now` by the local clock, as gc's other ages),
/// and the leases that expired, with their age and size.
pub async fn held_elsewhere(
    bucket: &Bucket,
    leases: &[aws_sdk_s3::types::Object],
    expiry: Duration,
    now: SystemTime,
) -> crate::store::Result<(HashSet<String>, Vec<(String, Duration, u64)>)> {
    let mut held = HashSet::new();
    let mut expired = Vec::new();
    for o in leases {
        let Some(key) = o.key() else { continue };
        let age = object::age(o, now);
        if age >= expiry {
            expired.push((key.to_string(), age, o.size().unwrap_or(0).max(0) as u64));
            continue;
        }
        let r = bucket
            .client
            .get_object()
            .bucket(&bucket.name)
            .key(key)
            .send()
            .await;
        let body = match r.map_err(s3err) {
            Ok(r) => r.body.collect().await.map(|b| b.into_bytes()),
            // Deleted since it was listed: its process holds nothing.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into_store(key)),
        };
        let body = body.map_err(|e| {
            crate::store::StoreError::Unavailable(format!("{key}: reading the lease: {e}"))
        })?;
        let text = String::from_utf8_lossy(&body);
        if text.lines().next().is_some_and(gone_from_here) {
            expired.push((key.to_string(), age, body.len() as u64));
            continue;
        }
        held.extend(
            text.lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok((held, expired))
}

/// The first line of this process's lease: who holds it, for operators
/// and for `gone_from_here`.
fn this_process() -> String {
    let pid = std::process::id();
    format!(
        "# imagefs host={} boot={} pid={pid} start={}",
        read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        read_trimmed(BOOT_ID).unwrap_or_default(),
        start_time(pid).unwrap_or_default()
    )
}

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn read_trimmed(path: &str) -> Option<String> {
    Some(std::fs::read_to_string(path).ok()?.trim().to_string())
}

/// When process `pid` started (clock ticks after boot), telling it from a
/// later process given the same pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // starttime is field 22; `rest` starts at field 3.
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Whether a lease's first line names a process of this host and boot
/// that no longer runs.
fn gone_from_here(first: &str) -> bool {
    let field = |k: &str| {
        first
            .split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
    };
    let (Some(boot), Some(pid), Some(start)) = (field("boot"), field("pid"), field("start")) else {
        return false;
    };
    if boot.is_empty() || read_trimmed(BOOT_ID).as_deref() != Some(boot) {
        return false;
    }
    match pid.parse::<u32>() {
        Ok(pid) => start_time(pid).as_deref() != Some(start),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_of_a_process_gone_from_this_host() {
        let me = this_process();
        assert!(me.starts_with("# imagefs host="), "{me}");
        assert!(!gone_from_here(&me), "this process runs: {me}");
        let boot = read_trimmed(BOOT_ID).unwrap();
        let start = start_time(std::process::id()).unwrap();
        // A pid no process has (above pid_max), then our pid with another
        // start time (the pid reused).
        for other in [
            format!("# imagefs boot={boot} pid=4294967295 start={start}"),
            format!(
                "# imagefs boot={boot} pid={} start=1{start}",
                std::process::id()
            ),
        ] {
            assert!(gone_from_here(&other), "{other}");
        }
        // Another host or boot, or no header: only the expiry tells.
        for other in [
            format!("# imagefs boot=x{boot} pid=4294967295 start=1"),
            ".imagefs-tmp-x".to_string(),
            String::new(),
        ] {
            assert!(!gone_from_here(&other), "{other}");
        }
    }
}
