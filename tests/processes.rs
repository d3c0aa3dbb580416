//! Behaviour that ends or changes a process: SIGBUS (the default full-store
//! policy, and pages past EOF) and userfaultfd refused to an unprivileged user.
//! The binary re-runs itself as a child for each case (`harness = false`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Mount, read_file};
use mkwrite::{Error, FileStore, MappingOptions, MemStore, QuotaStore, Store, UffdOrigin};

const CHILD: &str = "MKWRITE_TEST_CHILD";
const PATH: &str = "MKWRITE_TEST_PATH";

fn main() {
    if let Ok(case) = std::env::var(CHILD) {
        child(&case);
        std::process::exit(0);
    }
    let tests: [(&str, fn()); 4] = [
        ("sigbus_when_full_loses_nothing_accepted", sigbus_when_full),
        ("sigbus_past_eof", sigbus_past_eof),
        (
            "sigbus_carries_the_fault_address",
            sigbus_carries_the_fault_address,
        ),
        (
            "userfaultfd_refused_then_fallback",
            userfaultfd_refused_then_fallback,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{} passed, {failed} failed", tests.len() - failed);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn run_child(case: &str, path: &str, configure: impl FnOnce(&mut Command)) -> Output {
    run_child_exe(&std::env::current_exe().unwrap(), case, path, configure)
}

fn run_child_exe(exe: &Path, case: &str, path: &str, configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(exe);
    cmd.env(CHILD, case).env(PATH, path);
    configure(&mut cmd);
    cmd.output().unwrap()
}

fn sigbus_when_full() {
    let fs = Mount::tmpfs(16 << 20);
    let path = fs.path("full");
    let out = run_child("full", path.to_str().unwrap(), |_| {});
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    let file = read_file(&path);
    assert_eq!(file.len(), 64 * 1024);
    assert!(
        file[..4096].iter().all(|&b| b == 0xAB),
        "the flushed page survived"
    );
    assert!(
        file[4096..].iter().all(|&b| b == 0),
        "the failed write reached nothing"
    );
}

fn sigbus_past_eof() {
    let out = run_child("past_eof", "", |_| {});
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
}

fn sigbus_carries_the_fault_address() {
    let out = run_child("handler", "", |_| {});
    assert_eq!(out.status.code(), Some(42), "{out:?}");
}

fn userfaultfd_refused_then_fallback() {
    let sysctl = "/proc/sys/vm/unprivileged_userfaultfd";
    let saved = std::fs::read_to_string(sysctl).unwrap();
    std::fs::write(sysctl, "0").unwrap();
    // The build tree may be private to root; give the unprivileged child its own copy.
    let public = tempfile::TempDir::new().unwrap();
    let exe = public.path().join("child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    for p in [public.path(), exe.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = run_child_exe(&exe, "unprivileged", "", |cmd| {
        cmd.uid(65534).gid(65534).current_dir("/");
    });
    std::fs::write(sysctl, saved.trim()).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("refused: cannot create a userfaultfd: not permitted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("vm.unprivileged_userfaultfd=1"),
        "the error says what to do: {stdout}"
    );
    assert!(stdout.contains("fallback: UserModeOnly ok"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "read(2) before populate: -1 Some({}), after: 16",
            libc::EFAULT
        )),
        "{stdout}"
    );
}

static EXPECTED_ADDRESS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    // SAFETY: SI_QUEUE signals carry a sigval, which is where mkwrite puts the address.
    let value = unsafe { info.si_value().sival_ptr } as usize;
    let ok = info.si_code == libc::SI_QUEUE && value == EXPECTED_ADDRESS.load(Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(if ok { 42 } else { 43 }) }
}

fn child(case: &str) {
    match case {
        "full" => {
            let path = std::env::var(PATH).unwrap();
            let store = FileStore::create(&path).unwrap().with_block_size(1024).unwrap();
            store.set_len(64 * 1024).unwrap();
            let map = MappingOptions::new()
                .capacity(64 * 1024)
                .map_store(QuotaStore::new(store, 4).unwrap())
                .unwrap();
            map.write(0, &[0xAB; 4096]).unwrap();
            map.flush().unwrap();
            // SAFETY: inside the mapping; page 1 needs blocks the quota refuses.
            unsafe { map.as_ptr().add(4096).write_volatile(1) };
            unreachable!("the write to a full store must not return");
        }
        "past_eof" => {
            let store = MemStore::new(4096, 16).unwrap();
            store.set_len(4096).unwrap();
            let map = MappingOptions::new()
                .capacity(64 * 1024)
                .map_store(store)
                .unwrap();
            // SAFETY: inside the reservation, but a page wholly past EOF.
            let byte = unsafe { map.as_ptr().add(8192).read_volatile() };
            unreachable!("read {byte} past EOF");
        }
        "handler" => {
            let store = MemStore::new(4096, 0).unwrap();
            store.set_len(4096).unwrap();
            let map = MappingOptions::new().capacity(4096).map_store(store).unwrap();
            EXPECTED_ADDRESS.store(map.as_ptr() as usize + 100, Ordering::SeqCst);
            // SAFETY: installing an async-signal-safe handler for SIGBUS.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
                map.as_ptr().add(100).write_volatile(1);
            }
            unreachable!("the handler exits");
        }
        "unprivileged" => {
            let mut opts = MappingOptions::new();
            opts.capacity(1 << 20).userfaultfd_fallback(false);
            let store = MemStore::new(4096, 16).unwrap();
            match opts.map_store(store) {
                Err(e @ Error::Userfaultfd { .. }) => println!("refused: {e}"),
                other => println!("unexpected: {other:?}"),
            }
            let store = MemStore::new(4096, 16).unwrap();
            store.set_len(8192).unwrap();
            let map = opts.userfaultfd_fallback(true).map_store(store).unwrap();
            assert_eq!(map.userfaultfd_origin(), UffdOrigin::UserModeOnly);
            map.write(0, b"works").unwrap();
            let mut back = [0u8; 5];
            map.read(0, &mut back).unwrap();
            assert_eq!(&back, b"works");
            println!("fallback: {:?} ok", map.userfaultfd_origin());
            // A system call cannot fault a page in here; populate first.
            let target = map.as_ptr() as usize + 4096;
            let read_into = || {
                let file = std::fs::File::open("/proc/self/exe").unwrap();
                // SAFETY: the destination is the mapping's memory; the kernel checks it.
                unsafe {
                    libc::read(
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        target as *mut libc::c_void,
                        16,
                    )
                }
            };
            let before = read_into();
            let errno = std::io::Error::last_os_error().raw_os_error();
            map.populate(4096, 4096, true).unwrap();
            println!(
                "read(2) before populate: {before} {errno:?}, after: {}",
                read_into()
            );
            map.flush().unwrap();
        }
        other => panic!("unknown child case {other}"),
    }
}
