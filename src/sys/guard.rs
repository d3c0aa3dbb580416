//! Copies through memory that may fault, where a SIGBUS or SIGSEGV ends the
//! copy instead of the process: the kernel's own "exception table" trick.
//!
//! The copy is one `rep movsb` (or `rep stosb`) at a known address. A fault
//! on it leaves the registers saying how far it got (`rcx` bytes remain) and
//! the saved instruction pointer on that instruction, so the signal handler,
//! when it finds the interrupted thread exactly there, rewrites the saved
//! context: the cause in `rax`, the bytes remaining in `rdx`, and the
//! instruction pointer on a `ret`. Returning from the handler resumes the
//! thread at that `ret`, and the copy returns the failure to its caller.
//!
//! The same handler serves the mappings whose faults are resolved in the
//! faulting thread (`UFFD_FEATURE_SIGBUS`): a kernel SIGBUS goes first to
//! the resolver set by [`install_resolver`], which resolves it (the access
//! runs again), fails it (with `si_errno` set, it goes on as below), or
//! does not know the address.
//!
//! Written by hand because no crate offers a recoverable copy. Nothing
//! unwinds or jumps across Rust frames (no `siglongjmp`): the handler only
//! reads the signal's information and edits the saved registers, which is
//! async-signal-safe; a signal anywhere else goes to the handler that was
//! installed before, or to the default action.

use std::io;
use std::sync::OnceLock;

/// What ended a guarded copy, as the handler found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Outcome {
    /// 0: the copy completed. Otherwise [`cause`] packed: the signal in the
    /// low byte, the signal's `si_code` and `si_errno` above it.
    pub cause: u64,
    /// Bytes not copied, counting the one that faulted.
    pub remaining: u64,
}

/// Packs what the handler knows of a signal into `Outcome::cause`.
fn cause(signal: libc::c_int, code: libc::c_int, errno: libc::c_int) -> u64 {
    (signal as u8 as u64) | ((code as u16 as u64) << 8) | ((errno as u32 as u64) << 24)
}

/// Unpacks `Outcome::cause`: (signal, si_code, si_errno).
pub(crate) fn unpack(cause: u64) -> (libc::c_int, libc::c_int, libc::c_int) {
    (
        (cause & 0xff) as libc::c_int,
        ((cause >> 8) & 0xffff) as u16 as i16 as libc::c_int,
        (cause >> 24) as u32 as libc::c_int,
    )
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use super::Outcome;

    // The System V ABI returns a two-u64 struct in rax:rdx. Both routines
    // keep the count in rcx for `rep`, which the CPU updates byte by byte,
    // so a fault leaves exactly the bytes remaining there.
    std::arch::global_asm!(
        ".pushsection .text.mkwrite_guarded,\"ax\",@progbits",
        ".p2align 4",
        ".globl mkwrite_guarded_copy",
        ".hidden mkwrite_guarded_copy",
        "mkwrite_guarded_copy:", // rdi = dst, rsi = src, rdx = len
        "    mov rcx, rdx",
        ".globl mkwrite_guarded_copy_insn",
        ".hidden mkwrite_guarded_copy_insn",
        "mkwrite_guarded_copy_insn:",
        "    rep movsb",
        "    xor eax, eax",
        "    xor edx, edx",
        "    ret",
        ".globl mkwrite_guarded_fill",
        ".hidden mkwrite_guarded_fill",
        "mkwrite_guarded_fill:", // rdi = dst, esi = byte, rdx = len
        "    mov eax, esi",
        "    mov rcx, rdx",
        ".globl mkwrite_guarded_fill_insn",
        ".hidden mkwrite_guarded_fill_insn",
        "mkwrite_guarded_fill_insn:",
        "    rep stosb",
        "    xor eax, eax",
        "    xor edx, edx",
        "    ret",
        ".globl mkwrite_guarded_fixup",
        ".hidden mkwrite_guarded_fixup",
        "mkwrite_guarded_fixup:", // the handler has set rax and rdx
        "    ret",
        ".popsection",
    );

    unsafe extern "C" {
        pub(super) fn mkwrite_guarded_copy(dst: *mut u8, src: *const u8, len: usize) -> Outcome;
        pub(super) fn mkwrite_guarded_fill(dst: *mut u8, byte: u32, len: usize) -> Outcome;
        static mkwrite_guarded_copy_insn: u8;
        static mkwrite_guarded_fill_insn: u8;
        static mkwrite_guarded_fixup: u8;
    }

    /// If `ctx` was interrupted on a guarded instruction: the page addresses
    /// the instruction was working on (destination, source).
    ///
    /// # Safety
    ///
    /// `ctx` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
    pub(super) unsafe fn guarded_at(ctx: *mut libc::c_void) -> Option<(usize, usize)> {
        // SAFETY: per the contract, a valid ucontext for this thread's signal.
        let regs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        let pc = regs[libc::REG_RIP as usize] as usize;
        let copy = &raw const mkwrite_guarded_copy_insn as usize;
        let fill = &raw const mkwrite_guarded_fill_insn as usize;
        (pc == copy || pc == fill).then(|| {
            (
                regs[libc::REG_RDI as usize] as usize,
                regs[libc::REG_RSI as usize] as usize,
            )
        })
    }

    /// Resumes the interrupted guarded copy at its exit, returning `cause`.
    ///
    /// # Safety
    ///
    /// As for [`guarded_at`], which must have returned `Some`.
    pub(super) unsafe fn resume_at_fixup(ctx: *mut libc::c_void, cause: u64) {
        // SAFETY: per the contract; the kernel restores these registers
        // when the handler returns.
        let regs = unsafe { &mut (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        regs[libc::REG_RDX as usize] = regs[libc::REG_RCX as usize];
        regs[libc::REG_RAX as usize] = cause as i64;
        regs[libc::REG_RIP as usize] = &raw const mkwrite_guarded_fixup as usize as i64;
    }

    /// The page fault behind this signal, from the x86 page-fault error
    /// code the kernel saves in `REG_ERR`: bit 1 set for a write, bit 0 set
    /// when the page was present (a protection fault, not a missing page).
    ///
    /// # Safety
    ///
    /// As for [`guarded_at`].
    pub(super) unsafe fn page_fault(ctx: *mut libc::c_void) -> super::PageFault {
        // SAFETY: per the contract.
        let regs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        let code = regs[libc::REG_ERR as usize];
        super::PageFault {
            write: code & 2 != 0,
            present: code & 1 != 0,
        }
    }

    /// The signal mask of the interrupted code.
    ///
    /// # Safety
    ///
    /// As for [`guarded_at`].
    pub(super) unsafe fn interrupted_mask(ctx: *mut libc::c_void) -> libc::sigset_t {
        // SAFETY: per the contract.
        unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_sigmask }
    }
}

/// What the interrupted code let in: the resolver restores it (plus SIGBUS)
/// before a long wait, so other signals reach the waiting thread.
pub(crate) struct Interrupted(libc::sigset_t);

impl Interrupted {
    /// Unblocks the signals the interrupted code had unblocked, except
    /// SIGBUS. Async-signal-safe (`pthread_sigmask`). Only call it holding
    /// no lock: a signal handler that runs now may fault on a mapping.
    pub(crate) fn let_signals_in(&self) {
        let mut mask = self.0;
        // SAFETY: a valid sigset, ours to edit; sigaddset and pthread_sigmask
        // are async-signal-safe. The kernel restores the handler's caller's
        // mask when the handler returns.
        unsafe {
            libc::sigaddset(&mut mask, libc::SIGBUS);
            libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
        }
    }
}

/// What the faulting access was, as the CPU reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageFault {
    /// A write (otherwise a read).
    pub write: bool,
    /// The page was mapped (a write-protect fault), not missing.
    pub present: bool,
}

/// What the in-thread resolver made of a kernel SIGBUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not an address of a mapping resolved in-thread.
    NotOurs,
    /// The page is ready: the access runs again.
    Resolved,
    /// The access fails, for this reason (an errno, set in `si_errno`).
    Failed(libc::c_int),
}

/// Resolves a fault at an address for a read or a write; async-signal-safe.
/// It runs with every signal blocked (so no other handler can enter it
/// while it holds a lock), and lets them in with [`Interrupted`] to wait.
pub(crate) type Resolver = fn(usize, PageFault, &Interrupted) -> Verdict;

static RESOLVER: OnceLock<Resolver> = OnceLock::new();

/// Installs the handler (see [`install`]) with `resolve` asked first about
/// every SIGBUS the kernel raises for a page fault.
pub(crate) fn install_resolver(resolve: Resolver) -> io::Result<()> {
    let _ = RESOLVER.set(resolve);
    install()
}

/// The actions that were installed before ours, for signals not ours.
struct Previous {
    bus: libc::sigaction,
    segv: libc::sigaction,
}

// SAFETY: plain data written once before the handler is installed, read only after.
unsafe impl Sync for Previous {}
// SAFETY: as above.
unsafe impl Send for Previous {}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();

fn page(addr: usize) -> usize {
    addr & !4095
}

/// The handler for SIGBUS and SIGSEGV. Async-signal-safe: it reads the
/// siginfo and the saved registers, `OnceLock::get` is one atomic load,
/// `getpid` and `sigaction` are on POSIX's list of safe functions, the
/// resolver is async-signal-safe by its contract, and it allocates nothing
/// and takes no lock.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if let (libc::SIGBUS, libc::BUS_ADRERR, Some(resolve)) = (signal, code, RESOLVER.get()) {
        // SAFETY: a kernel SIGBUS for a fault carries its address; the
        // context is this thread's.
        let (addr, fault, mask) = unsafe {
            (
                (*info).si_addr() as usize,
                arch::page_fault(ctx),
                Interrupted(arch::interrupted_mask(ctx)),
            )
        };
        match resolve(addr, fault, &mask) {
            Verdict::Resolved => return,
            // SAFETY: the siginfo is ours to edit until the handler returns.
            Verdict::Failed(errno) => unsafe { (*info).si_errno = errno },
            Verdict::NotOurs => {}
        }
    }
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    let (info_ref, at) = unsafe { (&*info, arch::guarded_at(ctx)) };
    if let Some((dst, src)) = at {
        let ours = if info_ref.si_code == libc::SI_QUEUE {
            // A queued SIGBUS is mkwrite's (its address in si_value) only if
            // this process sent it for the page being copied; any other is
            // somebody else's and goes on to the previous handler.
            // SAFETY: SI_QUEUE signals carry a sigval; getpid is async-signal-safe.
            let (addr, pid) = unsafe { (info_ref.si_value().sival_ptr as usize, info_ref.si_pid()) };
            // SAFETY: getpid has no preconditions.
            pid == unsafe { libc::getpid() } && (page(addr) == page(dst) || page(addr) == page(src))
        } else {
            true // raised by the kernel for the faulting instruction itself
        };
        if ours {
            // SAFETY: `guarded_at` returned Some for this context.
            unsafe { arch::resume_at_fixup(ctx, cause(signal, info_ref.si_code, info_ref.si_errno)) };
            return;
        }
    }
    chain(signal, info, ctx);
}

/// Hands a signal that is not a guarded copy's to the handler installed
/// before ours; with none, restores the default action and returns, so the
/// faulting access runs again and the default action ends the process.
fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(previous) = PREVIOUS.get() else { return };
    let action = if signal == libc::SIGBUS {
        &previous.bus
    } else {
        &previous.segv
    };
    let handler = action.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: sigaction is async-signal-safe; a zeroed action is SIG_DFL.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    } else if action.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it
        // has this signature; we pass on what the kernel gave us.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(signal, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signal);
    }
}

/// Installs the handler for SIGBUS and SIGSEGV, once per process; signals
/// that are not a guarded copy's still reach the handlers installed before.
pub(crate) fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sigaction with valid pointers; the handler is async-signal-safe
        // (see `on_fault`). PREVIOUS is set before ours is installed.
        unsafe {
            let mut previous: Previous = std::mem::zeroed();
            for (signal, slot) in [
                (libc::SIGBUS, &mut previous.bus),
                (libc::SIGSEGV, &mut previous.segv),
            ] {
                if libc::sigaction(signal, std::ptr::null(), slot) != 0 {
                    return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
                }
            }
            let _ = PREVIOUS.set(previous);
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_fault as *const () as usize;
            // SIGSEGV keeps the alternate stack, where a stack overflow must
            // be reported; SIGBUS runs on the thread's own stack, because
            // resolving a fault (store I/O, ioctls) needs more room than an
            // alternate stack of SIGSTKSZ (8 KiB) has, and with every signal
            // blocked, so that no other handler can fault on a mapping while
            // the resolver holds its lock (see `Interrupted`).
            for (signal, flags, block_all) in [
                (libc::SIGBUS, libc::SA_SIGINFO, true),
                (libc::SIGSEGV, libc::SA_SIGINFO | libc::SA_ONSTACK, false),
            ] {
                ours.sa_flags = flags;
                match block_all {
                    true => libc::sigfillset(&mut ours.sa_mask),
                    false => libc::sigemptyset(&mut ours.sa_mask),
                };
                if libc::sigaction(signal, &ours, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
                }
            }
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// Copies `len` bytes from `src` to `dst` with one `rep movsb`.
///
/// # Safety
///
/// Both ranges are valid for `len` bytes, or lie in memory whose faults end
/// in SIGBUS or SIGSEGV (a mapping's memory); [`install`] has succeeded.
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Outcome {
    // SAFETY: per the contract.
    unsafe { arch::mkwrite_guarded_copy(dst, src, len) }
}

/// Stores `byte` into `len` bytes at `dst` with one `rep stosb`.
///
/// # Safety
///
/// As for [`copy`].
pub(crate) unsafe fn fill(dst: *mut u8, byte: u8, len: usize) -> Outcome {
    // SAFETY: per the contract.
    unsafe { arch::mkwrite_guarded_fill(dst, byte as u32, len) }
}
