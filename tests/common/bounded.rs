//! Test cases that could hang, each run in a child process of the test
//! binary with a time limit (`harness = false`): a case that hangs is killed
//! and fails instead of stalling the suite. A case passes when its child
//! ends as expected.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Mount;

const CHILD: &str = "MKWRITE_BOUNDED_CHILD";
const DIR: &str = "MKWRITE_BOUNDED_DIR";
const LIMIT: Duration = Duration::from_secs(30);
/// Set, passing cases print their child's stdout too (what they measured).
const SHOW: &str = "MKWRITE_SHOW_OUTPUT";

/// How a case's child must end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    Exit(i32),
    Signal(i32),
}

/// What a case's child gets beside the binary.
#[derive(Clone, Copy, PartialEq)]
pub enum Setup {
    None,
    /// A size-limited tmpfs (64 MiB), its path in [`dir`].
    Tmpfs,
}

/// A case: its name, its body (run in the child), how it must end, its setup.
pub type Case = (&'static str, fn(), End, Setup);

/// The directory of a case with [`Setup::Tmpfs`], in its child.
pub fn dir() -> std::path::PathBuf {
    std::env::var(DIR).expect("case needs Setup::Tmpfs").into()
}

/// The test binary's `main`: in a child, runs its case; otherwise runs every
/// case (or those matching the arguments) in children and exits 1 if any failed.
pub fn run_cases(cases: &[Case]) {
    if let Ok(case) = std::env::var(CHILD) {
        let (_, run, _, _) = cases.iter().find(|c| c.0 == case).expect("known case");
        run();
        std::process::exit(0);
    }
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut failed = 0;
    let mut ran = 0;
    for &(name, _, end, setup) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        match run_bounded(name, end, setup) {
            Ok(stdout) => {
                println!("test {name} ... ok");
                // What a passing case measured, when asked for.
                if std::env::var_os(SHOW).is_some() {
                    print!("{stdout}");
                }
            }
            Err(why) => {
                println!("test {name} ... FAILED\n{why}");
                failed += 1;
            }
        }
    }
    println!("{} passed, {failed} failed", ran - failed);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Runs one case in a child, killed after [`LIMIT`]; returns its stdout.
fn run_bounded(name: &str, end: End, setup: Setup) -> Result<String, String> {
    let mount = (setup == Setup::Tmpfs).then(|| Mount::tmpfs(64 << 20));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD, name).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(m) = &mount {
        cmd.env(DIR, m.dir.path());
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "HUNG: killed after {LIMIT:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let got = match (status.code(), status.signal()) {
        (Some(c), _) => End::Exit(c),
        (_, Some(s)) => End::Signal(s),
        _ => unreachable!("a child either exits or is killed"),
    };
    if got == end {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "expected {end:?}, got {got:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
