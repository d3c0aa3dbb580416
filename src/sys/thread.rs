//! What another thread of this process is doing (`/proc/self/task/TID/syscall`,
//! `proc(5)`), and which process this is (`getpid(2)`).

use std::io::Read;

/// Where a thread blocked on a fault stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ThreadState {
    /// Faulted in user mode: a plain load or store.
    UserMode,
    /// Faulted inside a system call (`read(2)` into the mapping, `mlock(2)`,
    /// ...); the line identifies the call, to tell later whether it ended.
    InSyscall(String),
    /// Running, gone, or not readable: nothing can be told.
    Unknown,
}

/// Reads `/proc/self/task/TID/syscall`: `-1 …` for a thread blocked outside a
/// system call (a user-mode page fault), the call's number and arguments for
/// one blocked inside it, `running` for one on a CPU.
pub(crate) fn thread_state(tid: libc::pid_t) -> ThreadState {
    let mut line = String::new();
    let read = std::fs::File::open(format!("/proc/self/task/{tid}/syscall"))
        .and_then(|mut f| f.read_to_string(&mut line));
    if read.is_err() {
        return ThreadState::Unknown;
    }
    match line.split_whitespace().next() {
        Some("-1") => ThreadState::UserMode,
        Some(nr) if nr.parse::<i64>().is_ok() => ThreadState::InSyscall(line),
        _ => ThreadState::Unknown,
    }
}

/// This process's id: a mapping compares it with its owner's to notice that
/// it is being used in a child after `fork`.
pub(crate) fn process_id() -> u32 {
    std::process::id()
}
