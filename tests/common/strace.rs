//! Runs one test of the current test binary again, in a child process under
//! `strace -f -y`, and reads back the system calls it made, so a test can
//! see calls that leave no other trace (an `fsync` of a directory).
//!
//! strace must be installed (`apt-get install strace`; CI's `.ci/run` does):
//! without it the test fails, it does not skip.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::process::Command;

use tempfile::NamedTempFile;

/// One system call as strace printed it, its two halves joined if another
/// thread's call came between them.
#[derive(Clone, Debug)]
pub struct Syscall {
    /// The thread that made it (shown in failure messages).
    #[allow(dead_code)]
    pub pid: u32,
    pub name: String,
    /// The arguments as printed, with `-y` paths: `4</tmp/x>, 100`.
    pub args: String,
    /// What follows ` = `: `0`, `3</tmp/x/new>`, `-1 ENOENT (...)`.
    pub result: String,
}

impl Syscall {
    /// The path of the file descriptor in the first argument (`-y` output).
    pub fn fd_path(&self) -> Option<&str> {
        let first = self.args.split(", ").next()?;
        let (fd, rest) = first.split_once('<')?;
        fd.parse::<i32>().ok()?;
        rest.strip_suffix('>')
    }

    /// The call returned without error (`= 0` or a file descriptor).
    pub fn succeeded(&self) -> bool {
        !self.result.starts_with('-')
    }

    /// The `n`th argument as printed.
    pub fn arg(&self, n: usize) -> Option<&str> {
        self.args.split(", ").nth(n)
    }
}

/// Runs test `test` of this binary under `strace -f -y -e trace=<calls>`
/// with `env` set in its environment (the test, seeing it, runs its traced
/// part), asserts it ran and passed, and returns the calls of every thread in
/// the order they started in.
pub fn trace_test(test: &str, env: (&str, &OsStr), calls: &[&str]) -> Vec<Syscall> {
    let log = NamedTempFile::new().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-e"])
        .arg(format!("trace={}", calls.join(",")))
        .arg("-o")
        .arg(log.path())
        .arg(&exe)
        .args([test, "--exact", "--test-threads=1"])
        .env(env.0, env.1);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "strace is not installed: this test needs it (apt-get install strace; CI's .ci/run installs it)"
        ),
        Err(e) => panic!("{cmd:?}: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the traced run of {test} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&std::fs::read_to_string(log.path()).unwrap())
}

/// Parses strace's `-f -o` output: `PID name(args) = result`, a call cut by
/// another thread's as `PID name(args <unfinished ...>` and later
/// `PID <... name resumed>rest`; the calls come in the order they started.
pub fn parse(log: &str) -> Vec<Syscall> {
    // Each call's text, at the place where it started.
    let mut started: Vec<Option<(u32, String)>> = Vec::new();
    let mut pending: HashMap<u32, usize> = HashMap::new();
    for line in log.lines() {
        let Some((pid, text)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let text = text.trim_start();
        if let Some(head) = text.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, started.len());
            started.push(Some((pid, head.to_string())));
        } else if let Some(resumed) = text.strip_prefix("<... ") {
            let rest = resumed.split_once(" resumed>").map(|(_, rest)| rest);
            if let (Some(rest), Some(at)) = (rest, pending.remove(&pid))
                && let Some((_, head)) = &mut started[at]
            {
                head.push_str(rest);
            }
        } else {
            started.push(Some((pid, text.to_string())));
        }
    }
    started
        .into_iter()
        .flatten()
        .filter_map(|(pid, whole)| {
            // Skips "+++ exited +++", "--- SIGCHLD ---", a call that never returned.
            let (call, result) = whole.rsplit_once(" = ")?;
            let call = call.trim_end();
            let open = call.find('(')?;
            let args = call.strip_suffix(')')?;
            Some(Syscall {
                pid,
                name: call[..open].to_string(),
                args: args[open + 1..].to_string(),
                result: result.trim().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_whole_and_resumed_calls() {
        let calls = super::parse(
            "7 openat(AT_FDCWD</>, \"/t/new\", O_RDWR|O_CREAT|O_CLOEXEC, 0666) = 3</t/new>\n\
             7 fsync(4</t> <unfinished ...>\n\
             8 ftruncate(3</t/new>, 10000) = 0\n\
             7 <... fsync resumed>)     = 0\n\
             8 +++ exited with 0 +++\n",
        );
        let names: Vec<_> = calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["openat", "fsync", "ftruncate"],
            "in the order they started"
        );
        assert_eq!(calls[2].fd_path(), Some("/t/new"));
        assert_eq!(calls[2].arg(1), Some("10000"));
        assert_eq!(calls[1].fd_path(), Some("/t"));
        assert!(calls[1].succeeded());
        assert_eq!(calls[0].fd_path(), None, "AT_FDCWD is no descriptor");
    }
}
