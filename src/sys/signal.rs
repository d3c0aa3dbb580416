//! Delivering SIGBUS to a faulting thread (`rt_tgsigqueueinfo(2)`).

use std::io;

/// `siginfo_t` as filled for `SI_QUEUE`: signo, errno, code, then the
/// sender's pid and uid and the queued value, padded to the kernel's 128 bytes.
#[repr(C)]
struct QueuedSigInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    pid: libc::pid_t,
    uid: libc::uid_t,
    value: usize,
    _rest: [u8; 128 - 32],
}

const _: () = assert!(std::mem::size_of::<QueuedSigInfo>() == 128);

/// Sends SIGBUS to thread `tid` of this process, as the kernel does for a
/// failed fault: with its default action the process dies, and a handler sees
/// `si_code == SI_QUEUE`, the fault address in `si_value.sival_ptr` and why
/// in `si_errno` (`ENOSPC`, `EDQUOT`, `EFAULT` past EOF, or the store's error).
///
/// The kernel forbids a thread to forge `si_code >= 0` (such as `BUS_ADRERR`)
/// for another thread, hence `SI_QUEUE`.
pub(crate) fn send_sigbus(tid: libc::pid_t, address: u64, errno: libc::c_int) -> io::Result<()> {
    let info = QueuedSigInfo {
        signo: libc::SIGBUS,
        errno,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid: std::process::id() as libc::pid_t,
        // SAFETY: getuid has no preconditions.
        uid: unsafe { libc::getuid() },
        value: address as usize,
        _rest: [0; 96],
    };
    // SAFETY: the syscall reads 128 bytes of siginfo from `info`, which lives
    // across the call; the other arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            std::process::id() as libc::pid_t,
            tid,
            libc::SIGBUS,
            &info as *const QueuedSigInfo,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
