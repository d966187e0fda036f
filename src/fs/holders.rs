//! Whether a process still holds an image open: read from
//! /proc/PID/fdinfo (mount id and inode of each of its open files), never
//! by a stat that would ask this very file system.

use std::fs;

/// Whether process `pid` has a file open whose inode is `ino` on the mount
/// `mount_id`. Unknown (no such process, /proc unreadable) counts as no.
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
    field("mnt_id:") == Some(mount_id) && field("ino:") == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_fdinfo() {
        let info = "pos:\t0\nflags:\t0100002\nmnt_id:\t57\nino:\t12\n";
        assert!(matches(info, 57, 12));
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
