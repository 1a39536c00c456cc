//! Processes a test starts, stopped with everything they started when the test ends (passed,
//! failed or panicked). Killing only the direct child is not enough: `buildah run` leaves
//! `buildah-chroot-exec` and the proxy inside it running, Chromium its helpers.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a group has to exit on SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

pub trait SpawnGroup {
    /// Spawn as the leader of a new process group, which the returned guard stops when dropped.
    fn spawn_group(&mut self) -> io::Result<ProcessGroup>;
}

impl SpawnGroup for Command {
    fn spawn_group(&mut self) -> io::Result<ProcessGroup> {
        // SAFETY: getpid before the fork.
        let parent = unsafe { libc::getpid() };
        // A background group that reads the terminal is stopped (SIGTTIN), and `buildah run`
        // given a terminal puts the container's process in a session of its own.
        self.stdin(Stdio::null()).process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            self.pre_exec(move || {
                // A new group no longer gets the terminal's ^C; SIGTERM instead when the thread
                // that started it ends without dropping the guard (e.g. the test binary is
                // interrupted).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0
                    || libc::getppid() != parent
                {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = self.spawn()?;
        Ok(ProcessGroup {
            child,
            status: None,
        })
    }
}

/// A child started by [`SpawnGroup::spawn_group`] and its group: on drop the group gets
/// SIGTERM, [`GRACE`] to exit, then SIGKILL; the child is reaped.
pub struct ProcessGroup {
    child: Child,
    /// The child's exit status once a `try_wait` has reaped it.
    status: Option<ExitStatus>,
}

impl ProcessGroup {
    /// The child's pid, which is also the group's id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Signal every process of the group.
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to a group this guard started; see `stop` for why the id is ours.
        unsafe { libc::kill(-(self.id() as libc::pid_t), signal) };
    }

    fn stop(&mut self) {
        let pgid = self.id() as libc::pid_t;
        // While the child is not reaped (a zombie at worst) its pid, hence the group id, cannot
        // be given to another process. Once reaped, the id stays taken as long as a member of
        // the group lives, which is checked just before.
        if self.status.is_none() || group_alive(pgid) {
            self.signal(libc::SIGTERM);
            if !wait_until(GRACE, || !group_alive(pgid)) {
                self.signal(libc::SIGKILL);
                wait_until(GRACE, || !group_alive(pgid));
            }
        }
        if self.status.is_none() {
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a process that has not exited (zombies aside) is in group `pgid`.
pub fn group_alive(pgid: libc::pid_t) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .any(|(state, pgrp)| pgrp == pgid && !matches!(state, 'Z' | 'X' | 'x'))
}

/// Whether process `pid` is still running (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
}

/// State and process group of `pid` from /proc/PID/stat, if it exists.
fn stat(pid: u32) -> Option<(char, libc::pid_t)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may itself contain spaces and parentheses.
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Poll `done` until it holds or `limit` has passed; whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
