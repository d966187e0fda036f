//! Running as a daemon: detaching once the mount is ready (the parent exits
//! with the mount's outcome), PID files, systemd readiness, the kernel
//! read-ahead of the mount's backing device info, and the malloc arena
//! limit and periodic trim.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

/// The detached child's end of the readiness pipe.
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// Foreground: nothing to report to.
    pub fn foreground() -> Readiness {
        Readiness { pipe: None }
    }

    /// A problem that does not stop the mount (e.g. one store left out): the
    /// parent prints it before exiting.
    pub fn warn(&mut self, message: &str) {
        tracing::warn!("{message}");
        match &mut self.pipe {
            Some(p) => {
                let _ = p.write_all(format!("warning: {message}\n").as_bytes());
            }
            None => eprintln!("imagefs: warning: {message}"),
        }
    }

    /// Mounted: the parent exits 0; systemd hears READY=1.
    pub fn ready(&mut self) {
        notify_systemd("READY=1");
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"\0");
        }
    }

    /// Failed: the parent prints `message` and exits 1.
    pub fn failed(&mut self, message: &str) {
        // In the foreground the caller prints it.
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(message.as_bytes());
        }
    }
}

/// Forks. The parent waits for the child's readiness and exits with it; the
/// child returns, detached from the terminal (stdio on `log_file` or
/// /dev/null). Must run before any thread is started.
pub fn detach(log_file: Option<&Path>) -> io::Result<Readiness> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptors were just created and are owned once each.
    let (mut rx, tx) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet, so the child may continue freely.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(rx);
            // SAFETY: plain syscalls on our own process.
            unsafe { libc::setsid() };
            let out = match log_file {
                Some(p) => OpenOptions::new().create(true).append(true).open(p)?,
                None => OpenOptions::new().write(true).open("/dev/null")?,
            };
            let null = File::open("/dev/null")?;
            // SAFETY: dup2 onto the standard descriptors.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(out.as_raw_fd(), 1);
                libc::dup2(out.as_raw_fd(), 2);
            }
            Ok(Readiness { pipe: Some(tx) })
        }
        _ => {
            drop(tx);
            let mut msg = Vec::new();
            let _ = rx.read_to_end(&mut msg);
            // Warnings come first, one per line; then NUL (mounted) or the error.
            let mut lines = msg.split_inclusive(|b| *b == b'\n').peekable();
            while let Some(l) = lines.next_if(|l| l.starts_with(b"warning: ")) {
                eprint!("imagefs: {}", String::from_utf8_lossy(l));
            }
            let msg: Vec<u8> = lines.flatten().copied().collect();
            if msg == b"\0" {
                std::process::exit(0);
            }
            let text = if msg.is_empty() {
                "the daemon exited before mounting (see its log)".to_string()
            } else {
                String::from_utf8_lossy(&msg).into_owned()
            };
            eprintln!("imagefs: {text}");
            std::process::exit(1);
        }
    }
}

/// Writes our PID to `path`.
pub fn write_pid_file(path: &Path) -> io::Result<()> {
    fs::write(path, format!("{}\n", std::process::id()))
}

/// Sends a state line to systemd when run as a Type=notify service.
fn notify_systemd(state: &str) {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = sock.to_string_lossy().into_owned();
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let _ = if let Some(abs) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())
            .and_then(|a| s.send_to_addr(state.as_bytes(), &a))
    } else {
        s.send_to(state.as_bytes(), &path)
    };
}

/// The "major:minor" of the file system mounted at `mountpoint`, read from
/// /proc/self/mountinfo (a stat of the mountpoint would ask our own daemon,
/// which is not serving yet).
pub fn mount_device(mountpoint: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == want).then(|| f[2].to_string())
    })
}

/// The kernel's id of the mount at `mountpoint` (what /proc/PID/fdinfo
/// calls `mnt_id`), from /proc/self/mountinfo.
pub fn mount_id(mountpoint: &Path) -> Option<u64> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[4] == want)
            .then(|| f[0].parse().ok())
            .flatten()
    })
}

/// Sets the kernel read-ahead of the mount (the bdi FUSE registers for it).
pub fn set_read_ahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let dev = mount_device(mountpoint)
        .ok_or_else(|| io::Error::other("mount not found in /proc/self/mountinfo"))?;
    fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// glibc malloc arenas the daemon may use (unless `MALLOC_ARENA_MAX` is set).
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas. Upload parts (S3: 10 MiB and up) are
/// allocated on one runtime thread and freed on another; with glibc's
/// default of 8 arenas per core each thread's arena keeps its own freed
/// parts, and an 8 GiB S3 write peaked at 235-265 MiB RSS for ~75 MiB of
/// live buffers. Two arenas: 142-152 MiB, at the same speed and CPU
/// (BENCHMARKS.md, 2026-12-06). An operator's `MALLOC_ARENA_MAX` wins.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only changes a malloc tunable; M_ARENA_MAX limits
    // arenas created after the call and is safe to set at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// How often memory freed by the daemon is handed back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Every `TRIM_EVERY`, hands the heap memory freed since back to the kernel
/// (`malloc_trim`): glibc keeps what a burst freed in its arenas, so a
/// daemon that once served 16 sequential readers at once (32 MiB of
/// read-ahead each) would hold ~400 MiB for months. A trim of a quiet heap
/// costs microseconds; one during a transfer costs the page faults of
/// buffers reused afterwards.
pub fn spawn_malloc_trim(rt: &tokio::runtime::Handle) {
    rt.spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

/// On SIGABRT (a C++ exception nobody caught in librbd ends in abort, as
/// does a Rust panic that cannot unwind), writes the dying thread's name and backtrace to stderr
/// (the daemon's log), then dies of the same signal. Not async-signal-safe,
/// and it does not need to be: the process is ending either way, and a
/// daemon that dies under systemd with no trace cannot be debugged.
pub fn report_fatal_signals() {
    extern "C" fn on_fatal(sig: libc::c_int) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        let bt = std::backtrace::Backtrace::force_capture();
        let _ = writeln!(
            io::stderr(),
            "imagefs: fatal signal {sig} in thread {name:?}; backtrace:\n{bt}"
        );
        // SAFETY: restores the default action and re-raises the signal.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    {
        let sig = libc::SIGABRT;
        // SAFETY: installs a handler; the handler only re-raises after writing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fatal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Ends the process with `code` once everything of ours is closed, without
/// running C++ static destructors: librados and librbd keep threads of
/// their own (and ours may still be inside a librbd call, such as the
/// upkeep thread's flatten), and tearing their globals down under them
/// ends in std::terminate instead of a clean exit.
pub fn exit_now(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}
