//! A small fluent helper to run one of the crate's binaries and assert on
//! its exit status and output, printing everything it said when an
//! assertion fails (in the manner of ripgrep's `tests/util.rs`).
//!
//! ```ignore
//! Cmd::new("pgha-failover").args(["--help"]).run().success().stdout_contains("usage");
//! ```

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A command being built: a program, its arguments, environment, stdin and
/// an optional deadline.
#[derive(Debug)]
pub struct Cmd {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Cmd {
    /// One of this crate's binaries (`pgha-failover`, ...), found the way
    /// cargo builds it for integration tests (`CARGO_BIN_EXE_<name>`).
    pub fn new(bin: &str) -> Cmd {
        Cmd::program(assert_cmd::cargo::cargo_bin(bin))
    }

    /// Any program, by path or by name on `PATH`.
    pub fn program(path: impl AsRef<OsStr>) -> Cmd {
        let mut cmd = Command::new(path);
        cmd.stdin(Stdio::null());
        Cmd {
            cmd,
            stdin: None,
            timeout: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.cmd.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(key, val);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env_remove(key);
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cmd.current_dir(dir);
        self
    }

    /// Feeds `input` on stdin (default: `/dev/null`).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(input.into());
        self
    }

    /// Kills the program and fails the test when it runs longer than `t`
    /// (a hook pgpool waits for must never hang).
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = Some(t);
        self
    }

    /// Runs the program to completion and returns what it did.
    pub fn run(mut self) -> Run {
        let cmdline = format!("{:?}", self.cmd);
        if self.stdin.is_some() {
            self.cmd.stdin(Stdio::piped());
        }
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, so that a timeout also kills what it
        // started (ssh, psql) and nothing keeps the output pipes open.
        self.cmd.process_group(0);
        let started = Instant::now();
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
        if let Some(input) = self.stdin.take() {
            let mut w = child.stdin.take().expect("piped stdin");
            std::thread::spawn(move || {
                let _ = w.write_all(&input);
            });
        }
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let out = std::thread::spawn(move || read_all(out));
        let err = std::thread::spawn(move || read_all(err));
        let mut timed_out = false;
        let status = match self.timeout {
            None => child.wait().expect("wait"),
            Some(t) => loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break s;
                }
                if started.elapsed() >= t {
                    timed_out = true;
                    // SAFETY: kill(2) on the group we created; no memory involved.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                    break child.wait().expect("wait");
                }
                std::thread::sleep(Duration::from_millis(20));
            },
        };
        let run = Run {
            cmdline,
            output: Output {
                status,
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
            },
            elapsed: started.elapsed(),
        };
        if timed_out {
            run.fail(&format!(
                "killed after {:.1}s (timeout {:.1}s)",
                run.elapsed.as_secs_f64(),
                self.timeout.unwrap_or_default().as_secs_f64()
            ));
        }
        run
    }
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// What a [`Cmd`] did. Every assertion returns `&Self` so they chain, and
/// panics with the command line, status, stdout and stderr.
#[derive(Debug)]
pub struct Run {
    /// The command as run, for messages.
    pub cmdline: String,
    /// Status and captured output.
    pub output: Output,
    /// Wall-clock time the program ran.
    pub elapsed: Duration,
}

impl Run {
    /// The exit status.
    pub fn status(&self) -> ExitStatus {
        self.output.status
    }

    /// stdout, lossily decoded.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// stderr, lossily decoded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    #[track_caller]
    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\ncommand: {}\nstatus: {} after {:.2}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.output.status,
            self.elapsed.as_secs_f64(),
            self.stdout(),
            self.stderr()
        )
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn success(&self) -> &Self {
        if !self.output.status.success() {
            self.fail("expected success");
        }
        self
    }

    /// Asserts a non-zero exit status (or death by a signal).
    #[track_caller]
    pub fn failure(&self) -> &Self {
        if self.output.status.success() {
            self.fail("expected failure");
        }
        self
    }

    /// Asserts exit status `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        if self.output.status.code() != Some(code) {
            self.fail(&format!("expected exit status {code}"));
        }
        self
    }

    /// Asserts stdout contains `s`.
    #[track_caller]
    pub fn stdout_contains(&self, s: &str) -> &Self {
        if !self.stdout().contains(s) {
            self.fail(&format!("expected stdout to contain {s:?}"));
        }
        self
    }

    /// Asserts stderr contains `s`.
    #[track_caller]
    pub fn stderr_contains(&self, s: &str) -> &Self {
        if !self.stderr().contains(s) {
            self.fail(&format!("expected stderr to contain {s:?}"));
        }
        self
    }

    /// Asserts stdout does not contain `s`.
    #[track_caller]
    pub fn stdout_lacks(&self, s: &str) -> &Self {
        if self.stdout().contains(s) {
            self.fail(&format!("expected stdout not to contain {s:?}"));
        }
        self
    }

    /// Asserts stderr does not contain `s`.
    #[track_caller]
    pub fn stderr_lacks(&self, s: &str) -> &Self {
        if self.stderr().contains(s) {
            self.fail(&format!("expected stderr not to contain {s:?}"));
        }
        self
    }

    /// Asserts stdout is exactly `s`.
    #[track_caller]
    pub fn stdout_is(&self, s: &str) -> &Self {
        if self.stdout() != s {
            self.fail(&format!("expected stdout to be exactly {s:?}"));
        }
        self
    }
}

/// The path of one of this crate's binaries, e.g. to run it elsewhere.
pub fn bin_path(bin: &str) -> PathBuf {
    assert_cmd::cargo::cargo_bin(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_status_and_output() {
        let r = Cmd::program("sh")
            .args(["-c", "echo out; echo err >&2; cat; exit 3"])
            .stdin("in")
            .run();
        r.code(3)
            .failure()
            .stdout_contains("out\nin")
            .stderr_contains("err");
        r.stdout_lacks("err").stderr_lacks("out");
    }

    #[test]
    #[should_panic(expected = "expected exit status 0")]
    fn code_mismatch_panics_with_output() {
        Cmd::program("false").run().code(0);
    }

    #[test]
    #[should_panic(expected = "killed after")]
    fn timeout_kills() {
        Cmd::program("sleep")
            .arg("5")
            .timeout(Duration::from_millis(200))
            .run();
    }

    #[test]
    fn env_is_passed() {
        Cmd::program("sh")
            .args(["-c", "printf %s \"$PGHA_T\""])
            .env("PGHA_T", "x y")
            .run()
            .success()
            .stdout_is("x y");
    }
}
