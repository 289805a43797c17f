//! A restarted daemon takes up where the previous one stopped: the recorded tasks
//! are bound again (their sub-tasks after them), the tasks whose root exited in the
//! gap are ended, and what the kernel kept for no recorded task is let go.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    callers::Mailbox,
    engine::Engine,
    keeper::{Expect, Keeper},
    setup::Saved,
    tasks::{Binding, StartReq, bind},
};
use crate::{
    enforce::{self, cgroup::TaskCgroup},
    realpath::Wait,
    task::scope::Resolve,
};

/// Resumes the tasks a previous daemon recorded whose processes still run (or that
/// the kernel kept tracking): they are bound again, in their cgroup (with its network
/// guard if enforced), with their gate and mailbox taken back from the exec that keeps
/// them. The `task_start` says `resumed`, how long the gap was and whether the kernel
/// observed it (maps taken over). Returns the ids resumed, sub-tasks included.
pub fn resume(e: &mut Engine) -> Vec<String> {
    let mut done = Vec::new();
    let Some(state) = &e.setup.state else { return done };
    let last = state.last_beat();
    let records = state.records();
    let now = e.p.enr.clock().now_wall();
    let gap = last.map(|t| (t, now));
    // A cookie a previous daemon gave is never given again (its allowlist entries
    // may still be in the kernel's maps): raised past every record's before any
    // task is bound.
    for c in records.iter().filter_map(|s| s.cookie) {
        e.next_task = e.next_task.max(c.saturating_add(1));
    }
    let (subs, tops): (Vec<Saved>, Vec<Saved>) = records.into_iter().partition(|s| s.parent.is_some());
    // Processes the kernel kept under a sub-task's cookie share its parent's cgroup:
    // they are the sub-task's to take up, never the parent's.
    let sub_cookies: std::collections::BTreeSet<u32> = subs.iter().filter_map(|s| s.cookie).collect();
    for s in tops {
        let root = enforce::cgroup::v2_root();
        let drop_it = |e: &Engine| {
            if let Some(st) = &e.setup.state {
                st.drop_saved(&s.id)
            }
        };
        if s.cgroup
            .as_ref()
            .is_some_and(|c| root.as_ref().is_none_or(|r| !enforce::cgroup::is_task_cgroup(r, c)))
        {
            drop_it(e);
            continue;
        }
        let cg = s.cgroup.clone().and_then(|p| TaskCgroup::adopt(p).ok()).map(|mut cg| {
            cg.origin = s.origin_cgroup.clone();
            if let Some(o) = &cg.origin {
                e.p.enr.cgroups.origin(cg.id, o);
            }
            cg
        });
        let all = cg.as_ref().map(|c| c.pids()).unwrap_or_default();
        // Its sub-tasks' processes keep it too (an ended task whose only processes
        // left are a sub-task's is bound, so that the sub-task can be).
        let any = !all.is_empty();
        let pids: Vec<u32> = all
            .into_iter()
            .filter(|p| e.sensors.task_of(*p).is_none_or(|c| !sub_cookies.contains(&c)))
            .collect();
        // Kept in the kernel meanwhile: even a task that ended in the gap is bound,
        // for its events waiting in the ring (its root's exit among them). A task
        // whose end was recorded is bound again only for the processes it left
        // behind (a background process its root started): they stay its own, held
        // by its scope, as they were before the restart.
        let kept = s.cookie.filter(|_| e.sensors.taken_over());
        let live = any || (kept.is_some() && !s.ended);
        let Some(cg) = cg.filter(|_| live) else {
            // Ended while no daemon ran (its cgroup goes with `cg`).
            drop_it(e);
            continue;
        };
        let now = e.p.enr.clock().now_wall();
        // Held to the scope recorded at its start (`restore`): a path whose file
        // system does not answer now is kept as written, not a task left unbound.
        // In its own share of the lookups, not root's: a path that does not answer now
        // must not take the operators' starts' share.
        let share = s.cookie.map_or(0, |c| Wait::task(c, super::tasks::START_PATHS).who);
        let paths = Resolve::Lenient(Wait::new(share, super::tasks::START_PATHS));
        let mut task = match crate::task::parse_unresolved(&s.manifest, Path::new(&s.file), now, paths) {
            Ok(t) => t,
            Err(err) => {
                tracing::error!("resuming task {}: {err}", s.id);
                continue;
            }
        };
        // Bounded, as at a start (the loop and the other tasks' resumes wait).
        let slow = crate::task::scope::resolve_hosts_within(&mut task.connect, super::tasks::START_LOOKUPS);
        if !slow.is_empty() {
            tracing::warn!("resuming task {}: host names not answered in time: {}", s.id, slow.join(", "));
        }
        task.enforce |= s.enforce;
        task.expires = s.expires;
        // Granted when it started (checked then; the record is agentmon's own).
        task.take_grant(s.granted.clone());
        let moved = restore(&mut task, s.scope.as_ref());
        let r = StartReq {
            manifest: s.manifest,
            file: s.file,
            pid: s.root,
            enforce: s.enforce,
            events: s.events,
            attach: true,
            grant: None,
            launch: s.launch.iter().map(PathBuf::from).collect(),
            lsm: None,
            keeper: s.keeper.clone(),
            closed_fds: Vec::new(),
            asker: share,
            prepared: None,
        };
        let (ended, left) = (s.ended, pids.len());
        let bound =
            bind(e, task, r, Binding::Resumed { cgroup: cg, log: s.events_file, pids, gap, kept, ended });
        if let (Ok(id), Some(why)) = (&bound, moved) {
            let c = e.p.contain.cookie(id);
            e.tamper(s.root, c, "scope paths", &why, false);
        }
        if let Ok(id) = &bound {
            e.p.contain.adopt_left_pause(id);
        }
        match bound {
            Ok(id) if ended => {
                tracing::warn!("task {id} had ended; the {left} processes it left behind stay bound to it")
            }
            Ok(id) => {
                if let Some(k) = &s.keeper {
                    take_back(e, &id, k);
                }
                done.push(id)
            }
            Err(err) => tracing::error!("resuming task {}: {err}", s.id),
        }
    }
    done.extend(super::subtask::resume(e, subs, gap));
    done
}

/// Takes task `id`'s mailbox and approval gate back from the exec that keeps them
/// (runner/keeper.rs). What cannot be taken is said: the task's requests, or the
/// calls its gate would hold, then fail until it ends.
fn take_back(e: &mut Engine, id: &str, k: &Keeper) {
    let cookie = e.p.contain.cookie(id).unwrap_or(0);
    if let Some(fd) = k.mailbox {
        match k.take(fd, Expect::Socket).and_then(|fd| Mailbox::new(fd, cookie).map_err(|e| e.to_string())) {
            Ok(m) => e.mailboxes.push(m),
            Err(err) => tracing::warn!("task {id}: its control mailbox was not taken back: {err}"),
        }
    }
    if let Some(fd) = k.gate {
        match k.take(fd, Expect::Listener).and_then(|fd| {
            crate::gate::Gate::resumed(fd, e.setup.approval_timeout).map_err(|e| e.to_string())
        }) {
            Ok(g) => {
                e.p.gates.push(g);
                e.gated.insert((Arc::from(id), k.pid));
            }
            Err(err) => tracing::warn!(
                "task {id}: its approval gate was not taken back ({err}): the calls it would hold fail until it ends"
            ),
        }
    }
}

/// Ends the resumed tasks whose root exited while no daemon ran and whose exit no
/// event reported (called once the ring's waiting events are read).
pub fn end_rootless(e: &mut Engine, resumed: &[String]) {
    for id in resumed {
        let id: Arc<str> = Arc::from(id.as_str());
        let Some(root) = e.p.judge.task(&id).map(|b| b.root) else { continue };
        if !Path::new(&format!("/proc/{root}")).exists()
            && let Some(ev) = e.p.task_ended(&id, "its root exited while no daemon ran")
        {
            e.record(&ev);
        }
    }
}

/// After resuming on taken-over maps: processes and grants a previous daemon bound
/// to tasks no one resumed (ended while no daemon ran, or never recorded) are let go.
pub fn drop_unclaimed(e: &mut Engine) {
    // A recorded task that failed to resume (ended or not) keeps what the kernel
    // holds for it: letting it go would leave its processes running unenforced.
    let recorded: std::collections::BTreeSet<u32> = e
        .setup
        .state
        .as_ref()
        .map(|st| st.records().into_iter().filter_map(|s| s.cookie).collect())
        .unwrap_or_default();
    let mut known: std::collections::BTreeSet<u32> = e
        .sensors
        .tracked()
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| e.p.enr.task_name(*c).is_some() || recorded.contains(c))
        .collect();
    // Forks that escaped tracking hold their task's grants by its cgroup, whoever
    // resumed it.
    known.extend(super::finish::held_by_cgroups(&e.sensors, |_| true));
    for (pid, c) in e.sensors.tracked() {
        if !known.contains(&c) {
            tracing::info!(
                "process {pid} was tracked under cookie {c}, which no resumed task has: untracked"
            );
            let _ = e.sensors.untrack(pid);
        }
    }
    let armed = e.sensors.lsm_armed();
    if let Some(l) = e.sensors.lsm.as_mut() {
        // agentmon's own files stay protected while a previous daemon's enforced
        // tasks are held (what keep_tasks keeps of the protected files is what is
        // marked). With the hooks detached nothing is enforced, and the next
        // enrolment marks them again.
        if armed && let Err(err) = super::enroll::protect_own(l, &e.setup) {
            tracing::warn!("protecting agentmon's own files: {err}");
        }
        l.keep_tasks(&known);
    }
}

/// Holds `t` (its manifest parsed again) to the paths `rec` recorded at its start;
/// what the file system resolves differently now, said.
pub fn restore(t: &mut crate::task::Task, rec: Option<&Paths>) -> Option<String> {
    rec?.restore(t).unwrap_or_else(|e| {
        Some(format!("its recorded scope could not be compiled ({e}): held to its manifest as parsed now"))
    })
}

/// A task's path scope as resolved when it started. A restarted daemon holds the
/// task to these, not to its manifest parsed again: the agent may have swapped a
/// directory its scope names for a symlink meanwhile (`/w/sub` -> `/etc`), which
/// would move the scope — the judge's and the BPF LSM grants — wherever it points.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Paths {
    read: Vec<String>,
    write: Vec<String>,
    delete: Vec<String>,
    exec: Vec<String>,
    #[serde(default)]
    propose_dir: Option<PathBuf>,
    /// The addresses each host name of its connect scope allows (found at its start
    /// and by refreshes since): a restart keeps them, as the pinned guard does.
    #[serde(default)]
    hosts: Vec<(String, Vec<std::net::IpAddr>)>,
}

impl Paths {
    pub fn of(t: &crate::task::Task) -> Self {
        Self {
            read: t.read.patterns.clone(),
            write: t.write.patterns.clone(),
            delete: t.delete.patterns.clone(),
            exec: t.exec.patterns.clone(),
            propose_dir: t.propose_dir.clone(),
            hosts: Self::hosts_of(t),
        }
    }

    fn hosts_of(t: &crate::task::Task) -> Vec<(String, Vec<std::net::IpAddr>)> {
        t.connect
            .iter()
            .filter_map(crate::task::scope::Endpoint::host)
            .map(|(n, a)| (n.to_string(), a.to_vec()))
            .collect()
    }

    /// Records `t`'s host addresses now (a refresh added some).
    pub fn set_hosts(&mut self, t: &crate::task::Task) {
        self.hosts = Self::hosts_of(t);
    }

    /// Puts these back into `t` (its manifest parsed again); says what the file
    /// system resolves differently now, if anything.
    pub fn restore(&self, t: &mut crate::task::Task) -> Result<Option<String>, String> {
        let now = Self::of(t);
        let mut moved: Vec<String> = [
            ("read", &self.read, &now.read),
            ("write", &self.write, &now.write),
            ("delete", &self.delete, &now.delete),
            ("exec", &self.exec, &now.exec),
        ]
        .into_iter()
        .flat_map(|(clause, was, is)| {
            was.iter()
                .zip(is)
                .filter(|(a, b)| a != b)
                .map(move |(a, b)| format!("scope.{clause} {a} now resolves to {b}"))
        })
        .collect();
        if let (Some(a), Some(b)) = (&self.propose_dir, &now.propose_dir)
            && a != b
        {
            moved.push(format!("scope.propose_dir {} now resolves to {}", a.display(), b.display()));
        }
        t.propose_dir = self.propose_dir.clone();
        for ep in &mut t.connect {
            if let crate::task::scope::Endpoint::Host { name, addrs, .. } = ep
                && let Some((_, had)) = self.hosts.iter().find(|(n, _)| n == name)
            {
                addrs.extend(had.iter().filter(|a| !addrs.contains(a)).collect::<Vec<_>>());
                addrs.sort();
            }
        }
        let set = |p: &[String]| crate::task::scope::PathSet::resolved(p.to_vec()).map_err(|e| e.to_string());
        t.read = set(&self.read)?;
        t.write = set(&self.write)?;
        t.delete = set(&self.delete)?;
        t.exec = set(&self.exec)?;
        Ok((!moved.is_empty()).then(|| {
            format!(
                "{} (a symlink planted since it started?); the paths it was given are kept",
                moved.join("; ")
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_the_addresses_a_name_was_given() {
        let yaml = "id: t\nmode: execute\nscope:\n  connect: [\"api.example.com:443\", \"10.0.0.0/8:22\"]\n";
        let parse = || {
            crate::task::parse_unresolved(yaml, Path::new("t.yaml"), Default::default(), Resolve::Here)
                .unwrap()
        };
        let set = |t: &mut crate::task::Task, a: &[&str]| {
            if let crate::task::scope::Endpoint::Host { addrs, .. } = &mut t.connect[0] {
                *addrs = a.iter().map(|a| a.parse().unwrap()).collect();
            }
        };
        let mut before = parse();
        set(&mut before, &["192.0.2.1"]);
        let mut rec = Paths::of(&before);
        // A refresh added one.
        set(&mut before, &["192.0.2.1", "192.0.2.2"]);
        rec.set_hosts(&before);
        // The name resolves elsewhere at the restart: both kept, the new one added.
        let mut after = parse();
        set(&mut after, &["192.0.2.3"]);
        assert_eq!(rec.restore(&mut after), Ok(None), "addresses are not paths that moved");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert!(after.connect[0].allows_ip(ip(a), 443), "{a}");
        }
        assert_eq!(after.connect[1], before.connect[1]);
    }
}
