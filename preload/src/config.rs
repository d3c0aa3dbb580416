//! What the interposer manages and how, read once from the environment.
//!
//! - `MKWRITE_PRELOAD_PATHS`: files or directories, separated by `:`; a
//!   shared mapping of a regular file at or under one of them becomes a
//!   mkwrite mapping. Unset or empty: nothing is touched.
//! - `MKWRITE_PRELOAD_ON_FULL`: `sigbus` (the default, as the kernel) or
//!   `wait` (a write fault on a full store waits, trying again every
//!   100 ms, until space is freed).
//! - `MKWRITE_PRELOAD_STATS=1`: each file's statistics on stderr when its
//!   last mapping goes and at exit.
//! - `MKWRITE_PRELOAD_CAPACITY`: address space reserved per file, in bytes
//!   (default 16 GiB); no mapping of it may reach past this.
//! - `MKWRITE_PRELOAD_BLOCK_SIZE`: the block size mkwrite allocates in
//!   (default: the filesystem's).
//! - `MKWRITE_PRELOAD_DELIVERY`: `handler` (the default: mkwrite's fault
//!   threads resolve faults, so any system call on a view works) or
//!   `in-thread` (the faulting thread resolves its own, several times
//!   faster; the interposer prepares a view's pages before the C library
//!   calls it covers touch them, but any other system call given a view's
//!   page that is not ready fails with `EFAULT`).
//! - `MKWRITE_PRELOAD_DIRTY_TRACKING`: `faults` (the default: every first
//!   write after a flush faults) or `kernel` (the kernel notes such writes
//!   and `msync` asks it which pages were written: no fault; reading a
//!   hole allocates its blocks; mkwrite's block size is at least a page).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The interposer's settings.
#[derive(Debug)]
pub(crate) struct Config {
    pub paths: Vec<PathBuf>,
    pub wait_when_full: bool,
    pub stats: bool,
    pub capacity: u64,
    pub block_size: Option<u64>,
    pub in_thread: bool,
    pub kernel_dirty: bool,
}

const DEFAULT_CAPACITY: u64 = 16 << 30;

impl Config {
    /// Whether `path` (canonical) is one the user asked to manage.
    pub fn manages(&self, path: &Path) -> bool {
        self.paths.iter().any(|p| path.starts_with(p))
    }

    fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let paths = var("MKWRITE_PRELOAD_PATHS")
            .map(|v| v.split(':').filter(|p| !p.is_empty()).map(canonical).collect())
            .unwrap_or_default();
        // One of two words: `off` (the default when unset) or `on`.
        let switch = |name: &str, off: &str, on: &str| match var(name).as_deref() {
            None => Ok(false),
            Some(v) if v == off => Ok(false),
            Some(v) if v == on => Ok(true),
            Some(other) => Err(format!("{name}={other}: expected `{off}` or `{on}`")),
        };
        let wait_when_full = switch("MKWRITE_PRELOAD_ON_FULL", "sigbus", "wait")?;
        let number = |name: &str| -> Result<Option<u64>, String> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}={v}: expected a number of bytes"))
                })
                .transpose()
        };
        let capacity = number("MKWRITE_PRELOAD_CAPACITY")?.unwrap_or(DEFAULT_CAPACITY);
        let in_thread = switch("MKWRITE_PRELOAD_DELIVERY", "handler", "in-thread")?;
        let kernel_dirty = switch("MKWRITE_PRELOAD_DIRTY_TRACKING", "faults", "kernel")?;
        Ok(Config {
            paths,
            wait_when_full,
            stats: var("MKWRITE_PRELOAD_STATS").is_some_and(|v| v != "0"),
            capacity,
            block_size: number("MKWRITE_PRELOAD_BLOCK_SIZE")?,
            in_thread,
            kernel_dirty,
        })
    }
}

/// `path` made absolute and free of links as far as it exists: a file that
/// is yet to be created (LMDB's `data.mdb`) is named by its directory.
fn canonical(path: &str) -> PathBuf {
    let path = Path::new(path);
    if let Ok(found) = std::fs::canonicalize(path) {
        return found;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir).map_or_else(|_| path.to_path_buf(), |d| d.join(name))
        }
        _ => path.to_path_buf(),
    }
}

/// The settings; a bad one ends the process with a one-line message
/// (running on with a setting ignored could lose data the user meant to
/// protect).
pub(crate) fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::from_env().unwrap_or_else(|message| {
            crate::say(format_args!("{message}"));
            // Not `exit`: this may run in the library's constructor, where
            // running the process's destructors can wait on the loader.
            // SAFETY: ends the process at once; nothing needs cleaning up.
            unsafe { crate::real::_exit(2) };
            unreachable!("_exit returned")
        })
    })
}
