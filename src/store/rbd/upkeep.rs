//! Background upkeep of one connection: after a new version replaced an
//! image, flattening it away from the old version it was cloned from, then
//! purging old versions from the trash (also when the last reader of a
//! version that lost its name is done). One job at a time, on one thread,
//! so that upkeep never races itself on the same images. At unmount the
//! store waits (bounded) for the jobs queued and the readers still ending,
//! so a version deleted while it was read does not outlive the daemon.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::ffi::Image;
use super::{purge_old, Conn};

/// A new version (by RBD image id, which renames do not change) that may
/// be a clone of the old version `old`, then a purge; or a purge alone.
struct Job {
    detach: Option<(String, String)>,
    _busy: Busy,
}

/// How many jobs are queued or running, and readers ending, that may queue
/// more; signalled when it falls to zero.
#[derive(Default)]
struct Count {
    n: Mutex<usize>,
    zero: Condvar,
}

/// One unit of work in progress: counted until dropped.
pub(crate) struct Busy(Arc<Count>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut n = self.0.n.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            self.0.zero.notify_all();
        }
    }
}

/// The queue of one connection's upkeep thread, started at the first job.
#[derive(Default)]
pub(crate) struct Upkeep {
    tx: Mutex<Option<Sender<Job>>>,
    busy: Arc<Count>,
}

impl Upkeep {
    /// Counts work that may queue a job (a reader until its watch has
    /// ended) until the returned guard drops.
    pub fn busy(&self) -> Busy {
        *self.busy.n.lock().unwrap() += 1;
        Busy(self.busy.clone())
    }

    /// Waits until no job is queued or running and no counted work is
    /// left, `limit` at most; false if some was still left.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let n = self.busy.n.lock().unwrap();
        let (n, _) = self
            .busy
            .zero
            .wait_timeout_while(n, limit, |n| *n > 0)
            .unwrap();
        *n == 0
    }

    /// Queues the flatten of `new_id` (if it is a clone of `old`) and a
    /// purge of the trash.
    pub fn detach(&self, conn: &Arc<Conn>, new_id: String, old: String) {
        self.queue(
            conn,
            Job {
                detach: Some((new_id, old)),
                _busy: self.busy(),
            },
        );
    }

    /// Queues a purge of the trash.
    pub fn purge(&self, conn: &Arc<Conn>) {
        self.queue(
            conn,
            Job {
                detach: None,
                _busy: self.busy(),
            },
        );
    }

    fn queue(&self, conn: &Arc<Conn>, job: Job) {
        let mut tx = self.tx.lock().unwrap();
        let job = match tx.as_ref() {
            Some(t) => match t.send(job) {
                Ok(()) => return,
                // The thread is gone: start another.
                Err(e) => e.0,
            },
            None => job,
        };
        let (t, rx) = channel::<Job>();
        let weak = Arc::downgrade(conn);
        let spawned = std::thread::Builder::new()
            .name("rbd-upkeep".into())
            .spawn(move || {
                // Ends when the connection (holding the sender) is gone.
                while let Ok(job) = rx.recv() {
                    let Some(c) = weak.upgrade() else { break };
                    run(&c, &job);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = t.send(job);
                *tx = Some(t);
            }
            Err(e) => tracing::warn!("cannot start the RBD upkeep thread: {e}"),
        }
    }
}

fn run(c: &Conn, job: &Job) {
    if let Some((new_id, old)) = &job.detach {
        detach(c, new_id, old);
    }
    purge_old(c, false);
}

fn detach(c: &Conn, new_id: &str, old: &str) {
    let Ok(img) = Image::open_by_id(&c.pool, new_id) else {
        return;
    };
    let from_old = img.parent().ok().flatten().is_some_and(|p| p.image == old);
    if from_old {
        match img.flatten() {
            Ok(()) => tracing::debug!(old, "new version flattened"),
            Err(e) => tracing::warn!(old, "flattening a new version failed: {e}"),
        }
    }
}
