//! Real NBD servers for the tests: nbdkit (the file plugin, with filters)
//! and qemu-nbd, started as child processes on 127.0.0.1 or a Unix socket
//! and killed by the test that started them (on drop, and by the kernel
//! if the test process dies: both get `PR_SET_PDEATHSIG`).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Which server program, and how it serves the image.
#[derive(Clone, Debug)]
pub enum Program {
    /// `nbdkit [--filter=F]... file file=IMAGE [ARGS]...`
    Nbdkit { filters: Vec<String>, args: Vec<String> },
    /// `qemu-nbd -f raw --discard=unmap IMAGE`
    QemuNbd,
}

impl Program {
    pub fn nbdkit() -> Program {
        Program::Nbdkit {
            filters: Vec::new(),
            args: Vec::new(),
        }
    }

    /// nbdkit with `filters` (in order, outermost first) and their `args`.
    pub fn nbdkit_with(filters: &[&str], args: &[&str]) -> Program {
        Program::Nbdkit {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Program::Nbdkit { .. } => "nbdkit",
            Program::QemuNbd => "qemu-nbd",
        }
    }
}

/// Where a server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp,
    Unix,
}

/// A running server. Dropping it kills it.
pub struct Server {
    program: Program,
    image: PathBuf,
    listen: Listen,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// A free port on 127.0.0.1 (free when asked; the server binds it next).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sparse file of `size` bytes at `path`.
pub fn sparse_image(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

impl Server {
    /// Starts `program` serving `image`, and waits until it accepts connections.
    pub fn start(program: Program, image: &Path, listen: Listen) -> Server {
        let mut server = Server {
            program,
            image: image.to_owned(),
            listen,
            port: if listen == Listen::Tcp { free_port() } else { 0 },
            dir: TempDir::new().unwrap(),
            child: None,
        };
        server.launch();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The URI a client connects to.
    pub fn uri(&self) -> String {
        match self.listen {
            Listen::Tcp => format!("nbd://127.0.0.1:{}/", self.port),
            Listen::Unix => format!("nbd+unix:///?socket={}", self.socket().display()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.program.name()
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.program {
            Program::Nbdkit { filters, args } => {
                let mut cmd = Command::new("nbdkit");
                cmd.args(["--foreground", "--exit-with-parent"]);
                match self.listen {
                    Listen::Tcp => cmd.args(["--ipaddr", "127.0.0.1", "--port", &self.port.to_string()]),
                    Listen::Unix => cmd.arg("--unix").arg(self.socket()),
                };
                for f in filters {
                    cmd.arg(format!("--filter={f}"));
                }
                cmd.arg("file").arg(format!("file={}", self.image.display()));
                cmd.args(args);
                cmd
            }
            Program::QemuNbd => {
                // setpriv gives qemu-nbd the parent-death signal nbdkit sets itself.
                let mut cmd = Command::new("setpriv");
                cmd.args(["--pdeathsig", "KILL", "--", "qemu-nbd"]);
                cmd.args([
                    "-f",
                    "raw",
                    "--persistent",
                    "--shared=8",
                    "--discard=unmap",
                    "--cache=writeback",
                ]);
                match self.listen {
                    Listen::Tcp => cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()]),
                    Listen::Unix => cmd.arg("--socket").arg(self.socket()),
                };
                cmd.arg(&self.image);
                cmd
            }
        };
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        cmd
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut child = self.command().spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (is it installed? .ci/run installs nbdkit)",
                self.name()
            )
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = match self.listen {
                Listen::Tcp => TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok(),
                Listen::Unix => UnixStream::connect(self.socket()).is_ok(),
            };
            if up {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited at start ({status}): {}", self.name(), self.log_text());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not listen within 20 s: {}", self.name(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    /// What the server wrote to stderr.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// SIGKILL, as a crash or a power cut does to the server's memory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same server again, on the same address and image.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    /// Stops the server (SIGSTOP) and waits until every thread of it is
    /// stopped: the signal takes effect when each next runs, and a request
    /// sent before that would still be answered.
    pub fn pause(&self) {
        kill(self.pid(), Signal::SIGSTOP).unwrap();
        let tasks = format!("/proc/{}/task", self.pid());
        // A thread's state is the field after its parenthesised name.
        let stopped = |stat: std::path::PathBuf| {
            std::fs::read_to_string(stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(true) // a thread that ended meanwhile
        };
        let all_stopped = || {
            std::fs::read_dir(&tasks)
                .unwrap()
                .all(|task| stopped(task.unwrap().path().join("stat")))
        };
        let began = std::time::Instant::now();
        while !all_stopped() {
            assert!(
                began.elapsed() < std::time::Duration::from_secs(5),
                "the server never stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    pub fn resume(&self) {
        kill(self.pid(), Signal::SIGCONT).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process must be continued to die promptly everywhere.
            let _ = kill(self.pid(), Signal::SIGCONT);
        }
        self.kill();
    }
}

/// Fails the test process (instead of hanging CI) if it is not dropped
/// within `limit`. Servers die with the process (parent-death signal).
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::clone(&done);
        let what = what.to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if seen.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("{what}: still running after {limit:?}: a hang; failing the test process");
            std::process::exit(101);
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
