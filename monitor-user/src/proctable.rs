//! Process table of tracked processes, keyed by (tgid, start time): pids are reused,
//! the pair is not. Built from fork/exec/exit events; gives every event its ppid,
//! exe and ancestry. Bounded: exited processes are kept only in a small ring so
//! that their children's ancestry still resolves, then dropped.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub tgid: u32,
    pub start_ns: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub ppid: Option<u32>,
    pub parent: Option<ProcKey>,
    pub comm: String,
    pub exe: Option<std::sync::Arc<str>>,
    pub argv: Option<Vec<String>>,
    pub task: u32,
    pub exited: bool,
}

pub struct ProcTable {
    procs: HashMap<ProcKey, Proc>,
    /// Latest key of each live tgid.
    live: HashMap<u32, ProcKey>,
    exited: VecDeque<ProcKey>,
    exited_cap: usize,
}

impl Default for ProcTable {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl ProcTable {
    pub fn new(exited_cap: usize) -> Self {
        Self { procs: HashMap::default(), live: HashMap::default(), exited: VecDeque::new(), exited_cap }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Registers a task's root before its start time is known (it is filled in from
    /// the first kernel event, the root's exec).
    pub fn seed(&mut self, tgid: u32, p: Proc) {
        let key = ProcKey { tgid, start_ns: 0 };
        self.live.insert(tgid, key);
        self.procs.insert(key, p);
    }

    /// The process an event came from. An entry seeded with start 0 is re-keyed on
    /// first sight of its real start time.
    pub fn get_mut(&mut self, key: ProcKey) -> Option<&mut Proc> {
        if !self.procs.contains_key(&key) {
            let seeded = ProcKey { tgid: key.tgid, start_ns: 0 };
            if key.start_ns != 0 && self.live.get(&key.tgid) == Some(&seeded) {
                let p = self.procs.remove(&seeded)?;
                self.procs.insert(key, p);
                self.live.insert(key.tgid, key);
            }
        }
        self.procs.get_mut(&key)
    }

    /// Current key of a live process.
    pub fn live_key(&self, tgid: u32) -> Option<ProcKey> {
        self.live.get(&tgid).copied()
    }

    pub fn get(&self, key: &ProcKey) -> Option<&Proc> {
        self.procs.get(key)
    }

    /// Unknown process (e.g. tracked before agentmon saw its fork): a minimal entry.
    pub fn ensure(&mut self, key: ProcKey, comm: &str, task: u32) -> &mut Proc {
        if self.get_mut(key).is_none() {
            self.live.insert(key.tgid, key);
            self.procs.insert(key, Proc { comm: comm.into(), task, ..Default::default() });
        }
        self.procs.get_mut(&key).expect("just inserted")
    }

    /// A tracked process forked: the child inherits image, comm and task.
    pub fn fork(&mut self, parent: ProcKey, child: ProcKey) {
        let p = self.procs.get(&parent).cloned().unwrap_or_default();
        let c = Proc {
            ppid: Some(parent.tgid),
            parent: Some(parent),
            comm: p.comm,
            exe: p.exe,
            argv: p.argv,
            task: p.task,
            exited: false,
        };
        if let Some(old) = self.live.insert(child.tgid, child)
            && old != child
        {
            // The old holder of this pid is gone (pid reuse): forget it.
            self.retire(old);
        }
        self.procs.insert(child, c);
    }

    pub fn exec(
        &mut self,
        key: ProcKey,
        comm: &str,
        exe: Option<std::sync::Arc<str>>,
        argv: Option<Vec<String>>,
    ) {
        if let Some(p) = self.get_mut(key) {
            p.comm = comm.into();
            p.exe = exe;
            p.argv = argv;
        }
    }

    /// The process exited: it stays resolvable for its children for a while.
    pub fn exit(&mut self, key: ProcKey) {
        if let Some(p) = self.procs.get_mut(&key) {
            p.exited = true;
        }
        if self.live.get(&key.tgid) == Some(&key) {
            self.live.remove(&key.tgid);
        }
        self.exited.push_back(key);
        while self.exited.len() > self.exited_cap {
            if let Some(old) = self.exited.pop_front() {
                self.procs.remove(&old);
            }
        }
    }

    fn retire(&mut self, key: ProcKey) {
        if let Some(p) = self.procs.get_mut(&key)
            && !p.exited
        {
            self.exit(key);
        }
    }

    /// Keys from `key`'s parent up to the oldest known ancestor.
    pub fn ancestry(&self, key: ProcKey) -> Vec<ProcKey> {
        let mut out = Vec::new();
        let mut cur = self.procs.get(&key).and_then(|p| p.parent);
        while let Some(k) = cur {
            if out.len() >= 64 || out.contains(&k) {
                break;
            }
            out.push(k);
            cur = self.procs.get(&k).and_then(|p| p.parent);
        }
        out
    }

    /// Live tgids.
    pub fn live_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.live.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(tgid: u32, start_ns: u64) -> ProcKey {
        ProcKey { tgid, start_ns }
    }

    #[test]
    fn fork_exec_exit_and_ancestry() {
        let mut t = ProcTable::new(2);
        t.seed(100, Proc { comm: "agent".into(), task: 1, ppid: Some(1), ..Default::default() });
        // First event from the root carries its real start time.
        t.exec(k(100, 50), "bash", Some("/usr/bin/bash".into()), None);
        assert_eq!(t.get(&k(100, 50)).unwrap().exe.as_deref(), Some("/usr/bin/bash"));
        t.fork(k(100, 50), k(101, 60));
        t.fork(k(101, 60), k(102, 70));
        assert_eq!(t.get(&k(102, 70)).unwrap().exe.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(t.ancestry(k(102, 70)), vec![k(101, 60), k(100, 50)]);
        // The middle process exits: the grandchild's ancestry still resolves.
        t.exit(k(101, 60));
        assert_eq!(t.ancestry(k(102, 70)).len(), 2);
        assert_eq!(t.live_pids(), vec![100, 102]);
        // Bounded: after more exits the oldest exited entry is dropped.
        t.exit(k(102, 70));
        t.exit(k(100, 50));
        assert!(t.get(&k(101, 60)).is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn pid_reuse_gets_a_new_key() {
        let mut t = ProcTable::new(8);
        t.seed(5, Proc::default());
        t.exec(k(5, 1), "a", None, None);
        t.fork(k(5, 1), k(6, 2));
        t.fork(k(5, 1), k(6, 3)); // pid 6 reused without us seeing its exit
        assert!(t.get(&k(6, 2)).unwrap().exited);
        assert!(!t.get(&k(6, 3)).unwrap().exited);
    }
}
