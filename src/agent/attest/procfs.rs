//! Reading a process's facts from `/proc` (or a fake tree in tests).
//!
//! Rule enforced here: a process that is not there (file missing, or the
//! kernel answering `ESRCH` because it exited mid-read) is
//! [`AttestError::ProcessGone`], never "no facts": a caller that vanished is
//! refused, not attested by whatever else matches.

use std::io;
use std::path::{Path, PathBuf};

use super::AttestError;

/// `ESRCH` on Linux: reading a `/proc/<pid>` file of a process that has just exited.
const ESRCH: i32 = 3;

/// Start time of a process: clock ticks since boot, field 22 of
/// `<proc_root>/<pid>/stat`.
///
/// Field 2 (the command name, in parentheses) may itself contain spaces and
/// parentheses, so the fields are counted after the *last* `)`.
/// Errors: [`AttestError::ProcessGone`] if there is no such process,
/// [`AttestError::Proc`] if the file cannot be read, [`AttestError::ProcFormat`]
/// if it is not what the kernel writes.
pub fn process_start_time(proc_root: &Path, pid: i32) -> Result<u64, AttestError> {
    let path = pid_dir(proc_root, pid).join("stat");
    let stat = read(&path, pid)?;
    parse_start_time(&stat).map_err(|reason| AttestError::ProcFormat {
        path,
        reason: reason.to_owned(),
    })
}

/// The contents of `<proc_root>/<pid>/cgroup` (invalid UTF-8 replaced: pod
/// segments are ASCII, so a replaced byte can never form one).
pub(super) fn read_cgroup(proc_root: &Path, pid: i32) -> Result<String, AttestError> {
    let path = pid_dir(proc_root, pid).join("cgroup");
    read(&path, pid).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn pid_dir(proc_root: &Path, pid: i32) -> PathBuf {
    proc_root.join(pid.to_string())
}

fn read(path: &Path, pid: i32) -> Result<Vec<u8>, AttestError> {
    std::fs::read(path).map_err(|source| {
        if is_gone(&source) {
            AttestError::ProcessGone { pid }
        } else {
            AttestError::Proc {
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ESRCH)
}

/// Field 22 of a `stat` line, as bytes: the command name may be any bytes.
fn parse_start_time(stat: &[u8]) -> Result<u64, &'static str> {
    let close = stat
        .iter()
        .rposition(|&b| b == b')')
        .ok_or("no ')' closing the command name")?;
    let rest = std::str::from_utf8(&stat[close + 1..])
        .map_err(|_| "non-ASCII bytes after the command name")?;
    // After the command name comes field 3 (state); field 22 is the 20th from there.
    let field = rest
        .split_ascii_whitespace()
        .nth(22 - 3)
        .ok_or("fewer than 22 fields")?;
    field
        .parse()
        .map_err(|_| "field 22 (starttime) is not a number")
}
