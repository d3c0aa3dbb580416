//! A thin layer over the userfaultfd ioctls (`userfaultfd(2)`, `ioctl_userfaultfd(2)`).
//!
//! Written by hand rather than through the `userfaultfd` crate: that crate needs
//! bindgen at build time, lacks `UFFDIO_COPY_MODE_WP`, and turns an `EAGAIN`
//! from `UFFDIO_COPY` into a huge byte count. Every call here returns the
//! kernel's errno untouched, so races (`EEXIST`, `EAGAIN`) stay data.

use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::error::Error;

const UFFD_API: u64 = 0xAA;
const UFFDIO: u8 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const FEATURE_SIGBUS: u64 = 1 << 7;
const FEATURE_THREAD_ID: u64 = 1 << 8;
const FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
const FEATURE_POISON: u64 = 1 << 14;
const FEATURE_WP_ASYNC: u64 = 1 << 15;

const REGISTER_MODE_MISSING: u64 = 1 << 0;
const REGISTER_MODE_WP: u64 = 1 << 1;

const COPY_MODE_DONTWAKE: u64 = 1 << 0;
const COPY_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const EVENT_PAGEFAULT: u8 = 0x12;
const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// Bit numbers of the range ioctls in `uffdio_register.ioctls`.
const IOCTL_WAKE_BIT: u64 = 1 << 0x02;
const IOCTL_COPY_BIT: u64 = 1 << 0x03;
const IOCTL_WRITEPROTECT_BIT: u64 = 1 << 0x06;
const IOCTL_POISON_BIT: u64 = 1 << 0x08;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg` (32 bytes, packed in the kernel; every field here is
/// naturally aligned, so `repr(C)` gives the same layout).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct RawMsg {
    event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<RawMsg>() == 32);

const USERFAULTFD_IOC_NEW: libc::c_ulong = nix::request_code_none!(UFFDIO, 0x00) as libc::c_ulong;
const UFFDIO_API: libc::c_ulong =
    nix::request_code_readwrite!(UFFDIO, 0x3F, size_of::<UffdioApi>()) as libc::c_ulong;
const UFFDIO_REGISTER: libc::c_ulong =
    nix::request_code_readwrite!(UFFDIO, 0x00, size_of::<UffdioRegister>()) as libc::c_ulong;
const UFFDIO_UNREGISTER: libc::c_ulong =
    nix::request_code_read!(UFFDIO, 0x01, size_of::<UffdioRange>()) as libc::c_ulong;
const UFFDIO_WAKE: libc::c_ulong =
    nix::request_code_read!(UFFDIO, 0x02, size_of::<UffdioRange>()) as libc::c_ulong;
const UFFDIO_COPY: libc::c_ulong =
    nix::request_code_readwrite!(UFFDIO, 0x03, size_of::<UffdioCopy>()) as libc::c_ulong;
const UFFDIO_WRITEPROTECT: libc::c_ulong =
    nix::request_code_readwrite!(UFFDIO, 0x06, size_of::<UffdioWriteprotect>()) as libc::c_ulong;
const UFFDIO_POISON: libc::c_ulong =
    nix::request_code_readwrite!(UFFDIO, 0x08, size_of::<UffdioPoison>()) as libc::c_ulong;

/// How the userfaultfd was obtained; kept so callers can tell what they got.
/// Read it with [`Mapping::userfaultfd_origin`](crate::Mapping::userfaultfd_origin).
///
/// ```
/// use mkwrite::{MappingOptions, MemStore, UffdOrigin};
/// let map = MappingOptions::new().map_store(MemStore::new(4096, 16)?)?;
/// let serves_system_calls = match map.userfaultfd_origin() {
///     UffdOrigin::Syscall | UffdOrigin::Device => true,
///     UffdOrigin::UserModeOnly => false, // populate ranges before read(2) into them
/// };
/// println!("read(2) into the mapping faults pages in: {serves_system_calls}");
/// # Ok::<(), mkwrite::Error>(())
/// ```
#[doc(alias = "userfaultfd")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdOrigin {
    /// `userfaultfd(2)` with kernel faults handled too.
    Syscall,
    /// `/dev/userfaultfd` (`USERFAULTFD_IOC_NEW`), allowed by the device's file mode.
    Device,
    /// `userfaultfd(UFFD_USER_MODE_ONLY)`: faults taken inside system calls
    /// (for example `read(2)` into the mapping) fail with `EFAULT`.
    UserModeOnly,
}

/// What one fault message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub address: u64,
    pub write: bool,
    pub write_protect: bool,
    pub thread: libc::pid_t,
    /// Handed off by the faulting thread's signal handler, which waits in
    /// this hand-off slot; `None` for a message from the userfaultfd.
    pub slot: Option<usize>,
}

/// An open, API-negotiated userfaultfd.
#[derive(Debug)]
pub(crate) struct Uffd {
    fd: OwnedFd,
    origin: UffdOrigin,
    /// `UFFDIO_POISON` is available (Linux 6.6+).
    poison: std::sync::atomic::AtomicBool,
    /// Faults raise SIGBUS in the faulting thread instead of queuing a message.
    sigbus: bool,
    /// The kernel resolves write-protect faults itself (`UFFD_FEATURE_WP_ASYNC`,
    /// Linux 6.7+): a write to a protected page marks it written, and
    /// `PAGEMAP_SCAN` finds it (`sys/pagemap.rs`).
    wp_async: bool,
}

/// Runs an ioctl on `fd` with `arg`, retrying on `EINTR`.
fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: `arg` is a valid, exclusively borrowed `repr(C)` struct whose
        // layout is the one `request` encodes (size is part of the request code).
        let rc = unsafe { libc::ioctl(fd, request, arg as *mut T) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

fn userfaultfd_syscall(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: the userfaultfd syscall takes one int argument and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn userfaultfd_device(flags: libc::c_int) -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Tries, in order: the syscall, `/dev/userfaultfd`, and (if `fallback`) the
/// syscall with `UFFD_USER_MODE_ONLY`, which unprivileged processes may use
/// even when `vm.unprivileged_userfaultfd` is 0; only the last if
/// `user_mode_only`.
fn create(fallback: bool, user_mode_only: bool) -> Result<(OwnedFd, UffdOrigin), Error> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if user_mode_only {
        return userfaultfd_syscall(flags | UFFD_USER_MODE_ONLY)
            .map(|fd| (fd, UffdOrigin::UserModeOnly))
            .map_err(|source| Error::Userfaultfd {
                advice: "UFFD_USER_MODE_ONLY refused (Linux 5.11+)",
                source,
            });
    }
    match userfaultfd_syscall(flags) {
        Ok(fd) => Ok((fd, UffdOrigin::Syscall)),
        Err(first) if first.raw_os_error() == Some(libc::ENOSYS) => Err(Error::Userfaultfd {
            advice: "this kernel has no userfaultfd (CONFIG_USERFAULTFD=n)",
            source: first,
        }),
        Err(first) => userfaultfd_device(flags)
            .map(|fd| (fd, UffdOrigin::Device))
            .or_else(|e| {
                if fallback {
                    userfaultfd_syscall(flags | UFFD_USER_MODE_ONLY).map(|fd| (fd, UffdOrigin::UserModeOnly))
                } else {
                    Err(e)
                }
            })
            .map_err(|_| Error::Userfaultfd {
                advice: "not permitted: run as root or with CAP_SYS_PTRACE, set \
                         `sysctl vm.unprivileged_userfaultfd=1`, or grant read-write \
                         access to /dev/userfaultfd",
                source: first,
            }),
    }
}

/// `MKWRITE_WP_ASYNC=0` in the environment: never ask for `WP_ASYNC`, as
/// on a kernel without it, so `DirtyTracking::Kernel` tracks by faults (an
/// escape hatch for a kernel whose `WP_ASYNC` misbehaves, and how the
/// tests reach that path on a kernel that has it).
fn wp_async_disabled() -> bool {
    std::env::var_os("MKWRITE_WP_ASYNC").is_some_and(|v| v == "0")
}

impl Uffd {
    /// Opens a userfaultfd with write-protect and thread-id features (see
    /// [`create`]), plus exact fault addresses (Linux 5.18+, so a SIGBUS names
    /// the faulting byte) and poison markers (Linux 6.6+, so an access past
    /// EOF fails in system calls too) where the kernel has them. With
    /// `sigbus`, faults raise SIGBUS in the faulting thread
    /// (`UFFD_FEATURE_SIGBUS`) and no message is ever queued. With
    /// `wp_async`, write-protect faults are resolved by the kernel
    /// (`UFFD_FEATURE_WP_ASYNC`) where it offers that; see [`Uffd::wp_async`].
    pub(crate) fn open(
        fallback: bool,
        sigbus: bool,
        user_mode_only: bool,
        wp_async: bool,
    ) -> Result<Uffd, Error> {
        let mut required = FEATURE_PAGEFAULT_FLAG_WP | FEATURE_THREAD_ID;
        if sigbus {
            required |= FEATURE_SIGBUS;
        }
        let mut optional = FEATURE_EXACT_ADDRESS | FEATURE_POISON;
        let wp_async = wp_async && !wp_async_disabled();
        if wp_async {
            optional |= FEATURE_WP_ASYNC;
        }
        // UFFDIO_API may be called once per fd: ask one fd what the kernel
        // offers, then negotiate on a second.
        let (fd, origin) = create(fallback, user_mode_only)?;
        let offered = Uffd::with(fd, origin, sigbus).negotiate(0)?;
        let (fd, origin) = create(fallback, user_mode_only)?;
        let mut uffd = Uffd::with(fd, origin, sigbus);
        let features = uffd.negotiate(required | (offered & optional))?;
        uffd.wp_async = features & FEATURE_WP_ASYNC != 0 && wp_async;
        if features & required != required {
            return Err(Error::MissingFeature(
                "UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_THREAD_ID or UFFD_FEATURE_SIGBUS",
            ));
        }
        uffd.poison.store(
            features & FEATURE_POISON != 0,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(uffd)
    }

    fn with(fd: OwnedFd, origin: UffdOrigin, sigbus: bool) -> Uffd {
        Uffd {
            fd,
            origin,
            poison: std::sync::atomic::AtomicBool::new(false),
            sigbus,
            wp_async: false,
        }
    }

    /// Whether the kernel resolves write-protect faults itself (asked for
    /// and offered): writes to protected pages then never reach mkwrite.
    pub(crate) fn wp_async(&self) -> bool {
        self.wp_async
    }

    /// Whether faults raise SIGBUS in the faulting thread (no messages).
    pub(crate) fn raises_sigbus(&self) -> bool {
        self.sigbus
    }

    /// Enables `wanted`; returns the features the kernel reports.
    fn negotiate(&self, wanted: u64) -> Result<u64, Error> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features: wanted,
            ioctls: 0,
        };
        if let Err(e) = ioctl(self.fd.as_raw_fd(), UFFDIO_API, &mut api) {
            // EINVAL here means a requested feature is unknown to this kernel.
            return Err(if e.raw_os_error() == Some(libc::EINVAL) {
                Error::MissingFeature("UFFD_FEATURE_PAGEFAULT_FLAG_WP or UFFD_FEATURE_THREAD_ID")
            } else {
                Error::Io(e)
            });
        }
        Ok(api.features)
    }

    pub(crate) fn origin(&self) -> UffdOrigin {
        self.origin
    }

    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `UFFDIO_REGISTER` in MISSING | WP mode, or MISSING only for memory
    /// nobody may write (`read_only`).
    #[doc(alias = "UFFDIO_REGISTER")]
    pub(crate) fn register(&self, start: u64, len: u64, read_only: bool) -> Result<(), Error> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: if read_only {
                REGISTER_MODE_MISSING
            } else {
                REGISTER_MODE_MISSING | REGISTER_MODE_WP
            },
            ioctls: 0,
        };
        ioctl(self.as_raw_fd(), UFFDIO_REGISTER, &mut reg)?;
        let mut needed = IOCTL_WAKE_BIT | IOCTL_COPY_BIT;
        if !read_only {
            needed |= IOCTL_WRITEPROTECT_BIT;
        }
        if reg.ioctls & needed != needed {
            return Err(Error::MissingFeature(
                "UFFDIO_COPY / UFFDIO_WRITEPROTECT on anonymous memory",
            ));
        }
        if reg.ioctls & IOCTL_POISON_BIT == 0 {
            self.poison.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether [`poison`](Self::poison) is available.
    pub(crate) fn can_poison(&self) -> bool {
        self.poison.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the missing pages of `[start, start + len)` poisoned and wakes
    /// their waiters: every access to them, by a thread or inside a system
    /// call, then fails as an access past the end of a file does (SIGBUS
    /// `BUS_ADRERR` with the address, or `EFAULT`). Dropping the page
    /// (`MADV_DONTNEED`) removes the marker. `EEXIST`: a page is there.
    #[doc(alias = "UFFDIO_POISON")]
    pub(crate) fn poison(&self, start: u64, len: u64) -> io::Result<()> {
        let mut poison = UffdioPoison {
            range: UffdioRange { start, len },
            mode: 0,
            updated: 0,
        };
        loop {
            match ioctl(self.as_raw_fd(), UFFDIO_POISON, &mut poison) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                other => return other,
            }
        }
    }

    #[doc(alias = "UFFDIO_UNREGISTER")]
    pub(crate) fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        ioctl(self.as_raw_fd(), UFFDIO_UNREGISTER, &mut range)
    }

    /// Wakes threads waiting on faults in `[start, start + len)`.
    #[doc(alias = "UFFDIO_WAKE")]
    pub(crate) fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        ioctl(self.as_raw_fd(), UFFDIO_WAKE, &mut range)
    }

    /// Atomically installs `src` at `dst` (both page-multiple lengths), write-protected
    /// if `protect`, and wakes waiters if `wake` (else [`wake`](Self::wake) them later).
    ///
    /// `EEXIST` means a page is already there; `EAGAIN` means the mm changed
    /// under us: both are returned as-is for the caller to act on.
    #[doc(alias = "UFFDIO_COPY")]
    pub(crate) fn copy(&self, dst: u64, src: &[u8], protect: bool, wake: bool) -> io::Result<()> {
        self.copy_counted(dst, src, protect, wake).map_err(|(_, e)| e)
    }

    /// [`copy`](Self::copy), saying on failure how many bytes from `dst`
    /// went in before it (whole pages).
    pub(crate) fn copy_counted(
        &self,
        dst: u64,
        src: &[u8],
        protect: bool,
        wake: bool,
    ) -> Result<(), (u64, io::Error)> {
        let mut done = 0u64;
        let len = src.len() as u64;
        while done < len {
            let mut copy = UffdioCopy {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: len - done,
                mode: if protect { COPY_MODE_WP } else { 0 } | if wake { 0 } else { COPY_MODE_DONTWAKE },
                copy: 0,
            };
            let result = ioctl(self.as_raw_fd(), UFFDIO_COPY, &mut copy);
            // `copy` is bytes copied (> 0) or a negated errno; only trust a positive count.
            if copy.copy > 0 {
                done += copy.copy as u64;
            }
            match result {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }

    /// Sets or clears write protection on `[start, start + len)`; clearing wakes waiters.
    #[doc(alias = "UFFDIO_WRITEPROTECT")]
    pub(crate) fn write_protect(&self, start: u64, len: u64, protect: bool) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
        };
        loop {
            match ioctl(self.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                other => return other,
            }
        }
    }

    /// Reads pending fault messages without blocking; returns how many were read.
    /// Non-fault events are not enabled at registration and are skipped.
    pub(crate) fn read_faults(&self, out: &mut Vec<Fault>, buf: &mut [RawMsg]) -> io::Result<()> {
        let bytes = size_of_val(buf);
        // SAFETY: `buf` is a writable slice of plain-old-data messages of `bytes` bytes.
        let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(()),
                _ => Err(err),
            };
        }
        let count = n as usize / size_of::<RawMsg>();
        out.extend(
            buf[..count]
                .iter()
                .filter(|m| m.event == EVENT_PAGEFAULT)
                .map(|m| Fault {
                    address: m.address,
                    write: m.flags & PAGEFAULT_FLAG_WRITE != 0,
                    write_protect: m.flags & PAGEFAULT_FLAG_WP != 0,
                    thread: m.ptid as libc::pid_t,
                    slot: None,
                }),
        );
        Ok(())
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
