//! Processes with captured output: stdout by line, stderr as text, read by
//! threads while the process runs so a test can wait on what it prints.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a process printed so far.
#[derive(Default)]
struct Captured {
    stdout: Vec<String>,
    stderr: String,
    stdout_closed: bool,
}

#[derive(Default)]
struct Shared {
    captured: Mutex<Captured>,
    changed: Condvar,
}

/// Everything a finished process printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

/// A running process whose stdout (by line) and stderr are collected by
/// reader threads. Killed (SIGKILL) when dropped, if still running.
pub struct Proc {
    label: String,
    child: Child,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `command` with stdout and stderr captured. `label` names it in
    /// panic messages.
    pub fn start(label: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            read_lines(stdout, Arc::clone(&shared)),
            read_all(stderr, Arc::clone(&shared)),
        ];
        Proc {
            label: label.to_string(),
            child,
            shared,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a stdout line satisfying `accept` (lines
    /// already printed count too) and returns the first such line. `None` on
    /// timeout, or as soon as stdout is closed without such a line.
    pub fn wait_for(&self, accept: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_until(timeout, |c| c.stdout.iter().find(|l| accept(l)).cloned())
    }

    /// Waits up to `timeout` until stdout has at least `count` lines; returns
    /// the first `count`.
    pub fn wait_for_lines(&self, count: usize, timeout: Duration) -> Option<Vec<String>> {
        self.wait_until(timeout, |c| c.stdout.get(..count).map(<[String]>::to_vec))
    }

    /// The stdout lines printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.shared.captured.lock().unwrap().stdout.clone()
    }

    /// Waits up to `timeout` for stderr to contain `text`; false on timeout
    /// or once the process has closed its output.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.stderr.contains(text).then_some(()))
            .is_some()
    }

    /// Waits up to `timeout` for `check` to find something in the output so
    /// far; `None` on timeout or once stdout is closed without it.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&Captured) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut captured = self.shared.captured.lock().unwrap();
        loop {
            if let Some(found) = check(&captured) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if captured.stdout_closed {
                return None;
            }
            captured = self.shared.changed.wait_timeout(captured, left).unwrap().0;
        }
    }

    /// The stderr text printed so far.
    pub fn stderr(&self) -> String {
        self.shared.captured.lock().unwrap().stderr.clone()
    }

    /// The exit status if the process has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "cannot send SIG{name} to {}", self.label);
    }

    /// Waits up to `timeout` for the process to end, then collects all its
    /// output. Panics (after killing it) if it does not end in time.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; stderr: {}",
                    self.label,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close when the process (and any child holding them) ends.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let captured = self.shared.captured.lock().unwrap();
        Finished {
            status,
            stdout: captured.stdout.clone(),
            stderr: captured.stderr.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `nsenter -t PID FLAGS... -- ARGV...`: a command in namespaces of process
/// `pid` (`-m` its mounts, `-n` its network), not started yet.
pub fn nsenter(pid: u32, flags: &[&str], argv: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .args(["-t", &pid.to_string()])
        .args(flags)
        .arg("--")
        .args(argv)
        .stdin(Stdio::null());
    command
}

/// Runs `command` to its end; its stdout, which it must succeed to give.
/// `what` names it in the panic message.
pub fn stdout_of(mut command: Command, what: &str) -> String {
    let out: Output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_lines(pipe: impl Read + Send + 'static, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            shared.captured.lock().unwrap().stdout.push(line);
            shared.changed.notify_all();
        }
        shared.captured.lock().unwrap().stdout_closed = true;
        shared.changed.notify_all();
    })
}

fn read_all(mut pipe: impl Read + Send + 'static, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            shared.captured.lock().unwrap().stderr.push_str(&text);
            shared.changed.notify_all();
        }
    })
}
