//! Whether a process still holds an image open for writing: read from
//! /proc/PID/fdinfo (mount id, inode and open flags of each of its open
//! files), never by a stat that would ask this very file system.

use std::fs;

/// Whether process `pid` has a file open for writing whose inode is `ino`
/// on the mount `mount_id` (a descriptor open read-only does not count: a
/// reader keeping the image open must not hold back the commit of its own
/// writes). Unknown (no such process, /proc unreadable) counts as no.
pub fn holds(pid: u32, mount_id: u64, ino: u64) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    dir.flatten().any(|e| {
        fs::read_to_string(e.path())
            .map(|info| matches(&info, mount_id, ino))
            .unwrap_or(false)
    })
}

fn matches(info: &str, mount_id: u64, ino: u64) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 8).ok());
    let writable = flags.is_some_and(|f| {
        let acc = f & libc::O_ACCMODE as u64;
        acc == libc::O_WRONLY as u64 || acc == libc::O_RDWR as u64
    });
    writable && field("mnt_id:") == Some(mount_id) && field("ino:") == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_fdinfo() {
        let info = "pos:\t0\nflags:\t0100002\nmnt_id:\t57\nino:\t12\n";
        assert!(matches(info, 57, 12));
        let read_only = "pos:\t0\nflags:\t0100000\nmnt_id:\t57\nino:\t12\n";
        assert!(!matches(read_only, 57, 12), "a reader holds nothing back");
        assert!(!matches(info, 57, 13));
        assert!(!matches(info, 58, 12));
        assert!(!matches("pos:\t0\n", 57, 12));
    }

    #[test]
    fn finds_a_file_this_process_holds() {
        let f = tempfile::tempfile().unwrap();
        let ino = f.metadata().unwrap().ino();
        let me = std::process::id();
        let mnt = fs::read_dir(format!("/proc/{me}/fdinfo"))
            .unwrap()
            .flatten()
            .find_map(|e| {
                let info = fs::read_to_string(e.path()).ok()?;
                info.contains(&format!("ino:\t{ino}\n")).then(|| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("mnt_id:"))
                        .unwrap()
                        .trim()
                        .parse::<u64>()
                        .unwrap()
                })
            })
            .expect("our temp file is in fdinfo");
        assert!(holds(me, mnt, ino));
        drop(f);
        assert!(!holds(me, mnt, ino));
        assert!(!holds(u32::MAX, mnt, ino));
    }
}
