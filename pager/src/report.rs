//! How the pager reports: output whose write errors are returned, never
//! panicked on (`println!` panics on a closed pipe, since Rust ignores
//! SIGPIPE), and the failures that pick the exit code.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use mkwrite::{Error, PartialError};

/// Exit status when stdout was closed under us (`pager demo | head -3`): the
/// status a shell shows for a program killed by SIGPIPE (128 + 13), so a
/// pipeline under `set -o pipefail` treats the pager as it treats `cat`.
pub const EXIT_CLOSED_PIPE: u8 = 141;

/// Why a subcommand stopped.
#[derive(Debug)]
pub enum Failure {
    /// mkwrite refused; a full store exits 3.
    Map(Error),
    /// A request the pager refuses itself, said in one line.
    Other(String),
    /// Writing to stdout failed: a closed pipe ends the run quietly.
    Output(io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Map(e)
    }
}

impl From<PartialError> for Failure {
    fn from(e: PartialError) -> Failure {
        Failure::Map(e.error)
    }
}

/// Files the pager reads or makes itself (`--from`, the demo's directory).
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Map(e.into())
    }
}

impl Failure {
    /// Says what went wrong in one line on stderr (nothing for a closed
    /// pipe: the reader left on purpose) and picks the exit code.
    pub fn exit(self) -> ExitCode {
        match self {
            Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_CLOSED_PIPE),
            Failure::Output(e) => {
                say(format_args!("pager: error: cannot write the output: {e}"));
                ExitCode::from(1)
            }
            Failure::Other(msg) => {
                say(format_args!("pager: error: {msg}"));
                ExitCode::from(1)
            }
            Failure::Map(e) => {
                say(format_args!("pager: error: {e}{}", hint(&e)));
                ExitCode::from(if e.is_full() { 3 } else { 1 })
            }
        }
    }
}

fn hint(err: &Error) -> &'static str {
    match err {
        Error::NoSpace(_) => " (free space on the filesystem, or write less)",
        Error::Quota(_) => " (raise --quota)",
        Error::OutOfRange { .. } => " (check the offset against the file's length: `pager stat FILE`)",
        Error::ReadOnly { .. } => " (check the file's permissions and mount)",
        _ => "",
    }
}

/// One line on stderr. If stderr is gone too there is nobody left to tell.
pub fn say(args: fmt::Arguments) {
    let _ = writeln!(io::stderr(), "{args}");
}

/// Standard output, locked; every write error is returned as [`Failure::Output`].
pub struct Out(io::StdoutLock<'static>);

impl Out {
    pub fn new() -> Out {
        Out(io::stdout().lock())
    }

    pub fn line(&mut self, args: fmt::Arguments) -> Result<(), Failure> {
        writeln!(self.0, "{args}").map_err(Failure::Output)
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.0.write_all(bytes).map_err(Failure::Output)
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.0.flush().map_err(Failure::Output)
    }
}

/// `outln!(out, "...", ...)`: `writeln!` to an [`Out`], returning its error.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
