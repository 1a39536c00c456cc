//! The reload history the console lists: each load of the config, its result, the error of a
//! failed one and what changed in who may do what (the `scopegate diff` lines).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many loads are kept (the oldest goes first).
const KEPT: usize = 50;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reload {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The generation in use after it (the running one when it failed).
    pub generation: u64,
    /// `start`, `ok` or `error`.
    pub result: &'static str,
    pub error: Option<String>,
    /// What changed, as `scopegate diff` prints it.
    pub changes: Vec<String>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&super::super::access_log::Rfc3339(*t))
}

#[derive(Debug, Default)]
pub struct ReloadHistory(Mutex<VecDeque<Reload>>);

impl ReloadHistory {
    pub fn new() -> ReloadHistory {
        ReloadHistory::default()
    }

    fn push(&self, reload: Reload) {
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == KEPT {
            list.pop_front();
        }
        list.push_back(reload);
    }

    /// The config the process started with.
    pub fn started(&self, generation: u64) {
        self.push(Reload {
            time: SystemTime::now(),
            generation,
            result: "start",
            error: None,
            changes: Vec::new(),
        });
    }

    pub fn succeeded(&self, generation: u64, changes: Vec<String>) {
        self.push(Reload {
            time: SystemTime::now(),
            generation,
            result: "ok",
            error: None,
            changes,
        });
    }

    /// A failed reload; `generation` is the one kept.
    pub fn failed(&self, generation: u64, error: String) {
        self.push(Reload {
            time: SystemTime::now(),
            generation,
            result: "error",
            error: Some(error),
            changes: Vec::new(),
        });
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Reload> {
        let list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().rev().cloned().collect()
    }
}
