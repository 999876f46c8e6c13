//! The plane's book of HA VMs: for each VM started with `ha`, the StartVm
//! that made it (to start it again elsewhere), where it runs now, and
//! whether a restart is under way or done.
//!
//! Owns only that memory. It decides nothing and sends nothing: the engine
//! (ha/mod.rs) asks it which VMs a dead host leaves behind, and the registry
//! feeds it results and heartbeats. With a book file (`serve --ha`: in the
//! state directory) every change is written there, so a plane that restarts
//! still knows which VMs to restart and never reuses a restart's command id
//! (an agent would answer a reused id from its result cache without
//! starting anything). The file is written by a thread of its own, latest
//! state wins: the fsync never runs under the registry's lock or on an
//! async worker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use csagent_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::statefile::{self, StateError};

/// One HA VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HaVm {
    /// The StartVm that made it, sent again unchanged to restart it.
    pub start: pb::StartVm,
    /// The host that runs it, by its latest heartbeats.
    pub host: String,
    /// Volume paths the host reported for its disks (the disks a neighbour
    /// watches for writes).
    pub disk_paths: Vec<String>,
    /// Restarts begun so far; the n-th restart is sent with id
    /// `ha-<vm>-<n>`, so a resend of one attempt runs it once.
    pub attempts: u32,
    /// The host it was last restarted away from, while that host has not
    /// come back (a copy reported there then is stale).
    pub restarted_from: Option<String>,
}

#[derive(Default)]
pub struct Book {
    vms: HashMap<String, HaVm>,
    /// Where each change goes, when the book is kept on disk.
    writer: Option<mpsc::Sender<HashMap<String, HaVm>>>,
}

impl Book {
    /// The book kept in `path`: what it holds now (a missing file is an
    /// empty book; an unreadable one is an error naming it), and a writer
    /// thread for every change from here on.
    pub fn open(path: &Path) -> Result<Book, StateError> {
        let vms: HashMap<String, HaVm> = statefile::load(path)?;
        let (tx, rx) = mpsc::channel();
        let file = path.to_path_buf();
        std::thread::Builder::new()
            .name("ha-book".into())
            .spawn(move || write_each(&file, &rx))
            .map_err(|e| StateError::Write {
                path: path.to_path_buf(),
                reason: format!("cannot start its writer thread: {e}"),
            })?;
        if !vms.is_empty() {
            tracing::info!(vms = vms.len(), file = %path.display(), "HA book read back");
        }
        Ok(Book {
            vms,
            writer: Some(tx),
        })
    }

    /// Hands the current book to the writer, if there is one.
    fn changed(&self) {
        if let Some(w) = &self.writer {
            let _ = w.send(self.vms.clone());
        }
    }

    /// A StartVm answered OK on `host`: remembered if its spec asks for HA.
    pub fn started(&mut self, host: &str, start: &pb::StartVm, result: &pb::StartVmResult) {
        let Some(spec) = start.spec.as_ref().filter(|s| s.ha) else {
            return;
        };
        let vm = spec.uuid.to_ascii_lowercase();
        let mut disk_paths: Vec<String> = result.volume_paths.clone();
        for d in &spec.disks {
            if d.source_type == "file"
                && d.source.starts_with('/')
                && !disk_paths.contains(&d.source)
            {
                disk_paths.push(d.source.clone());
            }
        }
        let entry = self.vms.entry(vm).or_insert_with(|| HaVm {
            start: start.clone(),
            host: host.to_string(),
            disk_paths: Vec::new(),
            attempts: 0,
            restarted_from: None,
        });
        entry.start = start.clone();
        entry.host = host.to_string();
        entry.disk_paths = disk_paths;
        self.changed();
    }

    /// A VM was stopped or destroyed on purpose: no longer HA's business.
    pub fn stopped(&mut self, vm: &str) {
        if self.vms.remove(&vm.to_ascii_lowercase()).is_some() {
            self.changed();
        }
    }

    /// A heartbeat of `host` lists these VMs running: that is where they are
    /// (a live migration moves them without a StartVm). A VM HA restarted
    /// away from `host` is never pulled back by it; once `host` no longer
    /// lists it, its stale copy is gone and `host` is an ordinary host for it.
    pub fn seen_running(&mut self, host: &str, vms: &[&str]) {
        let mut changed = false;
        for (vm, e) in self.vms.iter_mut() {
            let listed = vms.iter().any(|v| v.eq_ignore_ascii_case(vm));
            if e.restarted_from.as_deref() == Some(host) {
                if !listed {
                    e.restarted_from = None;
                    changed = true;
                }
            } else if listed && e.host != host {
                e.host = host.to_string();
                changed = true;
            }
        }
        // Heartbeats come every few seconds: write only what changed.
        if changed {
            self.changed();
        }
    }

    /// HA VMs whose host is `host`.
    pub fn on_host(&self, host: &str) -> Vec<(String, HaVm)> {
        let mut out: Vec<_> = self
            .vms
            .iter()
            .filter(|(_, v)| v.host.eq_ignore_ascii_case(host))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Begins one restart attempt; its command id.
    pub fn attempt(&mut self, vm: &str) -> Option<String> {
        let e = self.vms.get_mut(vm)?;
        e.attempts += 1;
        let id = format!("ha-{vm}-{}", e.attempts);
        self.changed();
        Some(id)
    }

    /// The restart on `to` succeeded.
    pub fn restarted(&mut self, vm: &str, from: &str, to: &str) {
        if let Some(e) = self.vms.get_mut(vm) {
            e.host = to.to_string();
            e.restarted_from = Some(from.to_string());
            self.changed();
        }
    }

    /// `host` registered and reports `running`: the VMs among them that HA
    /// restarted elsewhere while it was away (their copies there are stale;
    /// the book keeps them away from `host` until it stops listing them).
    /// For the others the host is current again.
    pub fn stale_on_return(&mut self, host: &str, running: &[&str]) -> Vec<(String, String)> {
        let mut stale = Vec::new();
        let mut back = false;
        for (vm, e) in self.vms.iter_mut() {
            if e.restarted_from.as_deref() != Some(host) {
                continue;
            }
            if running.iter().any(|r| r.eq_ignore_ascii_case(vm)) {
                stale.push((vm.clone(), e.host.clone()));
            } else {
                e.restarted_from = None;
                back = true;
            }
        }
        if back {
            self.changed();
        }
        stale.sort();
        stale
    }

    pub fn disk_paths_on(&self, host: &str) -> Vec<String> {
        let mut paths: Vec<String> = self
            .on_host(host)
            .into_iter()
            .flat_map(|(_, v)| v.disk_paths)
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

/// The writer thread: each book it is handed, only the latest of a burst,
/// replaces the file atomically. A failed write is logged; the next change
/// tries again.
fn write_each(path: &Path, rx: &mpsc::Receiver<HashMap<String, HaVm>>) {
    while let Ok(mut book) = rx.recv() {
        while let Ok(newer) = rx.try_recv() {
            book = newer;
        }
        if let Err(e) = statefile::save(path, &book) {
            tracing::error!(error = %e, "HA book not saved: a plane restart would forget changes since the last save");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(vm: &str, ha: bool) -> pb::StartVm {
        pb::StartVm {
            spec: Some(pb::VmSpec {
                uuid: vm.into(),
                ha,
                disks: vec![pb::VmDisk {
                    source_type: "file".into(),
                    source: "/shared/a.qcow2".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_ha_vms_are_kept_and_a_migration_moves_them() {
        let mut b = Book::default();
        b.started("h1", &start("V1", true), &Default::default());
        b.started("h1", &start("v2", false), &Default::default());
        assert_eq!(b.on_host("h1").len(), 1);
        assert_eq!(b.disk_paths_on("h1"), vec!["/shared/a.qcow2".to_string()]);
        b.seen_running("h2", &["v1"]);
        assert!(b.on_host("h1").is_empty());
        assert_eq!(b.on_host("h2")[0].0, "v1");
    }

    /// Reopens the book file until what it holds passes `ok` (the writer
    /// thread saves a moment after each change).
    fn reopened_when(path: &Path, ok: impl Fn(&Book) -> bool) -> Book {
        for _ in 0..200 {
            if let Ok(b) = Book::open(path) {
                if ok(&b) {
                    return b;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the book file never held the change");
    }

    #[test]
    fn a_book_on_disk_survives_a_restart_with_its_attempts_and_moves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha-book.json");
        let mut b = Book::open(&path).unwrap();
        b.started("h1", &start("v1", true), &Default::default());
        b.started("h1", &start("v2", true), &Default::default());
        assert_eq!(b.attempt("v1").as_deref(), Some("ha-v1-1"));
        b.restarted("v1", "h1", "h2");
        b.stopped("v2");
        let mut again = reopened_when(&path, |r| {
            r.on_host("h2").len() == 1 && r.on_host("h1").is_empty()
        });
        // The next restart gets a new id, not one an agent has cached.
        assert_eq!(again.attempt("v1").as_deref(), Some("ha-v1-2"));
        // The stale-copy memory came back too.
        assert_eq!(
            again.stale_on_return("h1", &["v1"]),
            vec![("v1".into(), "h2".into())]
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_unreadable_book_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha-book.json");
        std::fs::write(&path, "{ not json").unwrap();
        let e = Book::open(&path).err().expect("refused").to_string();
        assert!(e.contains(path.to_str().unwrap()), "{e}");
    }

    #[test]
    fn attempts_get_distinct_ids_and_a_stale_copy_is_named_once() {
        let mut b = Book::default();
        b.started("h1", &start("v1", true), &Default::default());
        assert_eq!(b.attempt("v1").as_deref(), Some("ha-v1-1"));
        assert_eq!(b.attempt("v1").as_deref(), Some("ha-v1-2"));
        b.restarted("v1", "h1", "h2");
        // The dead host's last heartbeat cannot pull the VM back.
        b.seen_running("h1", &["v1"]);
        assert_eq!(b.on_host("h2").len(), 1);
        assert_eq!(
            b.stale_on_return("h1", &["v1"]),
            vec![("v1".into(), "h2".into())]
        );
        // Until the stale copy is gone, h1's heartbeats cannot pull it back.
        b.seen_running("h1", &["v1"]);
        assert_eq!(b.on_host("h2").len(), 1);
        b.seen_running("h1", &[]);
        assert!(b.stale_on_return("h1", &["v1"]).is_empty());
        assert_eq!(b.on_host("h2").len(), 1);
    }
}
