//! Real mounts for tests that need a real filesystem's behaviour (a real
//! `ENOSPC` from a size-limited tmpfs, ext4's block sizes). CI runs as
//! root; these fail (not skip) without it. Shared with the interposer's
//! tests (`preload/tests`), which include this file by path.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_root() {
    assert!(
        effective_uid() == 0,
        "this test mounts filesystems and must run as root (CI does)"
    );
}

/// A mounted filesystem in a temporary directory, unmounted on drop.
pub struct Mount {
    pub dir: TempDir,
    _image: Option<TempDir>,
}

impl Mount {
    /// A tmpfs limited to `bytes`.
    pub fn tmpfs(bytes: u64) -> Mount {
        require_root();
        let dir = TempDir::new().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path()));
        Mount { dir, _image: None }
    }

    /// An ext4 filesystem of `bytes` with `block` byte blocks on a loop device,
    /// no blocks reserved for root (root would otherwise eat into them).
    pub fn ext4(bytes: u64, block: u64) -> Mount {
        require_root();
        let image_dir = TempDir::new().unwrap();
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image).unwrap().set_len(bytes).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-b", &block.to_string()])
            .arg(&image));
        let dir = TempDir::new().unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path()));
        Mount {
            dir,
            _image: Some(image_dir),
        }
    }

    /// Remounts it read-only: even root then cannot open its files for writing.
    pub fn remount_read_only(&self) {
        remount_read_only(self.dir.path());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy unmount: a failing test may still hold a file open here.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Remounts the filesystem mounted at `dir` read-only.
pub fn remount_read_only(dir: &Path) {
    run(Command::new("mount").args(["-o", "remount,ro"]).arg(dir));
}

pub fn effective_uid() -> u32 {
    // /proc/self/status "Uid: real effective saved fs"; no unsafe needed.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}
