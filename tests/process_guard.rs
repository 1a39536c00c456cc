//! A test leaves nothing running: what it started through `spawn_group`, and whatever that
//! started in turn, is gone once the test body has panicked.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{alive, group_alive, wait_until};
use common::*;

/// A process's start time (clock ticks since boot), which tells it apart from a later process
/// given the same pid.
fn started_at(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the process that had pid `pid` and start time `at` still runs.
fn still_running(pid: u32, at: u64) -> bool {
    alive(pid) && started_at(pid) == Some(at)
}

/// Start `sh -c script` (which writes its background child's pid to `pid_file`), then panic
/// while holding the guard; the child's and the grandchild's pids and start times.
fn panic_holding(script: &str, pid_file: &Path) -> [(u32, u64); 2] {
    let mut ids = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let group = Command::new("sh")
            .args(["-c", script])
            .spawn_group()
            .unwrap();
        let grandchild = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(pid_file).is_ok_and(|t| t.ends_with('\n'))
        });
        assert!(grandchild, "the child never started its own child");
        let child = group.id();
        let grandchild: u32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ids = Some([child, grandchild].map(|pid| (pid, started_at(pid).unwrap())));
        assert!(ids.unwrap().iter().all(|&(pid, at)| still_running(pid, at)));
        panic!("the test body fails while its processes run");
    }));
    assert!(outcome.is_err());
    ids.expect("the body got as far as its panic")
}

fn assert_gone(ids: [(u32, u64); 2]) {
    for (pid, at) in ids {
        assert!(
            wait_until(Duration::from_secs(10), || !still_running(pid, at)),
            "process {pid} outlived the test"
        );
    }
    assert!(!group_alive(ids[0].0 as libc::pid_t));
}

#[test]
fn a_panicking_test_leaves_neither_its_child_nor_the_child_s_child() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild");
    let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
    assert_gone(panic_holding(&script, &pid_file));
}

/// A group that ignores SIGTERM gets SIGKILL after the grace period.
#[test]
fn processes_that_ignore_sigterm_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild");
    // An ignored signal stays ignored across fork and exec, so `sleep` ignores it too.
    let script = format!(
        "trap '' TERM; sleep 300 & echo $! > {}; wait",
        pid_file.display()
    );
    assert_gone(panic_holding(&script, &pid_file));
}
