//! What userspace reads and writes in the kernel's maps once they are loaded:
//! process tracking (the hot path's filter), the network guard of enforced tasks,
//! the pinned state a restarted daemon takes over, and the counters.

use aya::{
    maps::{MapData, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSkbAttachType, Program, ProgramError, links::FdLink},
};
use std::collections::{BTreeMap, BTreeSet};

use monitor_common::{COUNTER_SLOTS, NetKeyData, NetPorts, Tracked, kind};

use super::{Counts, LoadError, Sensors};

/// The network guard's entries in the kernel: cgroups guarded (NET_TASK) and
/// allowlist and denied-address entries (NET_ALLOW).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardEntries {
    pub guards: usize,
    pub allow: usize,
}

/// The task cookie an address entry (NET_ALLOW key: cookie, big-endian, then the
/// address) is of.
fn cookie_of(k: &Key<NetKeyData>) -> u32 {
    let d = k.data();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Packets of one cgroup that the egress check dropped (see [`Sensors::new_drops`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drops {
    pub cgroup: u64,
    pub task: Option<u32>,
    pub new: u64,
    pub total: u64,
}

impl Sensors {
    /// Binds process `tgid` (and, through fork inheritance, all its future
    /// descendants) to task cookie `task`.
    pub fn track(&mut self, tgid: u32, task: u32) -> Result<(), LoadError> {
        let _rt = crate::kernel::preempt::hold();
        if tgid == std::process::id() {
            return Err(LoadError::MapOp {
                name: "TRACKED",
                msg: "refusing to track agentmon itself".into(),
            });
        }
        let v = Tracked { task, flags: 0, start_ns: 0 };
        self.tracked
            .insert(&tgid, &v, 0)
            .map_err(|e| LoadError::MapOp { name: "TRACKED", msg: e.to_string() })?;
        // Until the kernel marks it in TRACKED_BYTES, handlers must confirm unmarked
        // processes against TRACKED. Only userspace writes PENDING.
        self.unmarked.push(tgid);
        self.set_pending()
    }

    /// Forgets `tgid` (a process that was gone before it was tracked: its exit, which
    /// would have removed it, will never come).
    pub fn untrack(&mut self, tgid: u32) -> Result<(), LoadError> {
        let _rt = crate::kernel::preempt::hold();
        let _ = self.tracked.remove(&tgid);
        self.unmarked.retain(|t| *t != tgid);
        self.set_pending()
    }

    pub(super) fn set_pending(&mut self) -> Result<(), LoadError> {
        self.pending
            .set(0, &(self.unmarked.len() as u64), 0)
            .map_err(|e| LoadError::MapOp { name: "PENDING", msg: e.to_string() })
    }

    /// Drops roots the kernel has marked (or that are gone) from the pending set.
    pub fn settle_pending(&mut self) -> Result<(), LoadError> {
        let _rt = crate::kernel::preempt::hold();
        if self.unmarked.is_empty() {
            return Ok(());
        }
        let before = self.unmarked.len();
        let (bytes, tracked) = (&self.tracked_bytes, &self.tracked);
        self.unmarked.retain(|tgid| {
            let marked = bytes.get(&(tgid / 64), 0).map(|v| v[(tgid % 64) as usize] != 0).unwrap_or(false);
            let present = tracked.get(tgid, 0).is_ok();
            present && !marked
        });
        if self.unmarked.len() != before { self.set_pending() } else { Ok(()) }
    }

    /// Attaches the network guard to cgroup `cg` (an enforced task's) and loads the
    /// task's allowlist: destinations outside it are refused in the kernel.
    pub fn guard(
        &mut self,
        cg: &std::fs::File,
        cg_id: u64,
        task: u32,
        allow: &[(u32, NetKeyData, NetPorts)],
    ) -> Result<(), LoadError> {
        let _rt = crate::kernel::preempt::hold();
        let op = |name: &'static str, e: String| LoadError::MapOp { name, msg: e };
        for (bits, data, ports) in allow {
            self.net_allow
                .insert(&Key::new(*bits, *data), ports, 0)
                .map_err(|e| op("NET_ALLOW", e.to_string()))?;
        }
        self.net_task.insert(&cg_id, &task, 0).map_err(|e| op("NET_TASK", e.to_string()))?;
        for name in ["guard_connect4", "guard_connect6", "guard_sendmsg4", "guard_sendmsg6", "guard_egress"] {
            let fail = |stage: &'static str, msg: String| LoadError::Program {
                prog: name.into(),
                attach: "cgroup_sock_addr or cgroup_skb egress (task cgroup)".into(),
                stage,
                msg,
            };
            let at = self.pins.as_ref().map(|pins| pins.guard(name, cg_id));
            if at.as_ref().is_some_and(|a| a.exists()) {
                // Attached by a previous daemon and kept: it holds as it is.
                continue;
            }
            let e = |e: ProgramError| e.to_string();
            let link = match self.ebpf.program_mut(name) {
                Some(Program::CgroupSockAddr(p)) => {
                    let id = p.attach(cg, CgroupAttachMode::Single).map_err(|x| fail("attach", e(x)))?;
                    FdLink::try_from(p.take_link(id).map_err(|x| fail("own link", e(x)))?)
                }
                Some(Program::CgroupSkb(p)) => {
                    let id = p
                        .attach(cg, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
                        .map_err(|x| fail("attach", e(x)))?;
                    FdLink::try_from(p.take_link(id).map_err(|x| fail("own link", e(x)))?)
                }
                Some(_) => return Err(fail("find", "not a cgroup program".into())),
                None => return Err(fail("find", "missing from the object".into())),
            }
            .map_err(|x| fail("own link", x.to_string()))?;
            match at {
                Some(at) => self.pinned.push(link.pin(at).map_err(|x| fail("pin", x.to_string()))?),
                None => self.guard_links.push(link),
            }
        }
        Ok(())
    }

    /// Adds allowlist entries (a host name that resolved to new addresses).
    pub fn allow_more(&mut self, allow: &[(u32, NetKeyData, NetPorts)]) -> Result<(), LoadError> {
        let _rt = crate::kernel::preempt::hold();
        for (bits, data, ports) in allow {
            self.net_allow
                .insert(&Key::new(*bits, *data), ports, 0)
                .map_err(|e| LoadError::MapOp { name: "NET_ALLOW", msg: e.to_string() })?;
        }
        Ok(())
    }

    /// The task cookie `tgid` is tracked under, if it is.
    pub fn task_of(&self, tgid: u32) -> Option<u32> {
        let _rt = crate::kernel::preempt::hold();
        self.tracked.get(&tgid, 0).ok().map(|t| t.task)
    }

    /// Rewrites the entry of `tgid` only if it is still there: the process may exit
    /// (and the kernel drop its entry) between our read and this write, and an entry
    /// written back for a dead pid would bind whatever process reuses the pid to
    /// the task (to its kill mark too). False: it was gone.
    fn rewrite(&mut self, tgid: u32, v: &Tracked) -> Result<bool, LoadError> {
        const BPF_EXIST: u64 = 2;
        match self.tracked.insert(&tgid, v, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(LoadError::MapOp { name: "TRACKED", msg: e.to_string() }),
        }
    }

    /// Moves tracked process `tgid` (and so its future descendants) to task `task`.
    pub fn retag(&mut self, tgid: u32, task: u32) -> Result<(), LoadError> {
        let _rt = crate::kernel::preempt::hold();
        let gone =
            || LoadError::MapOp { name: "TRACKED", msg: format!("process {tgid} is no longer tracked") };
        let mut v = self.tracked.get(&tgid, 0).map_err(|_| gone())?;
        v.task = task;
        if self.rewrite(tgid, &v)? { Ok(()) } else { Err(gone()) }
    }

    /// Marks every process of the tasks `tasks` doomed (one walk of the map for them
    /// all): the kernel sends each SIGKILL at its next hooked syscall (and their
    /// children inherit the mark). Returns how many.
    pub fn doom(&mut self, tasks: &std::collections::HashSet<u32>) -> Result<usize, LoadError> {
        let _rt = crate::kernel::preempt::hold();
        let victims: Vec<(u32, Tracked)> =
            self.tracked.iter().filter_map(|r| r.ok()).filter(|(_, v)| tasks.contains(&v.task)).collect();
        let mut marked = 0;
        for (tgid, mut v) in victims.iter().copied() {
            v.flags |= monitor_common::tflags::DOOMED;
            marked += usize::from(self.rewrite(tgid, &v)?);
        }
        Ok(marked)
    }

    /// Processes currently tracked (tgid -> task cookie).
    pub fn tracked(&self) -> Vec<(u32, u32)> {
        let _rt = crate::kernel::preempt::hold();
        self.tracked.iter().filter_map(|r| r.ok()).map(|(k, v)| (k, v.task)).collect()
    }

    /// Takes the event ring buffer (once) for a reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The maps were a previous daemon's, its tracking and rules kept while no
    /// daemon ran (events of the gap are waiting in the ring).
    pub fn taken_over(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| p.reused)
    }

    /// The highest task cookie in the kernel's maps (0: none).
    pub fn max_cookie(&self) -> u32 {
        let _rt = crate::kernel::preempt::hold();
        let lsm = self.lsm.as_ref().map(|l| l.max_cookie()).unwrap_or(0);
        let net = self.net_task.iter().filter_map(|r| r.ok()).map(|(_, c)| c).fold(lsm, u32::max);
        // Address entries a failed guard left name a cookie no guard does (until the
        // first sweep): never given again either.
        let net = self.net_allow.keys().filter_map(|k| k.ok()).map(|k| cookie_of(&k)).fold(net, u32::max);
        self.tracked.iter().filter_map(|r| r.ok()).map(|(_, v)| v.task).fold(net, u32::max)
    }

    /// Detaches what a previous daemon left attached (its links, another build's
    /// state): called once this daemon's tasks are resumed under its own programs.
    pub fn retire_previous(&self) {
        if let Some(p) = &self.pins {
            match p.retire() {
                Ok(0) => {}
                Ok(n) => tracing::info!("detached {n} sets of a previous daemon's programs"),
                Err(e) => tracing::warn!("detaching a previous daemon's programs: {e}"),
            }
        }
    }

    /// Drops the pinned network guards of cgroups other than `live`.
    pub fn keep_guards(&self, live: &std::collections::BTreeSet<u64>) {
        if let Some(p) = &self.pins {
            p.keep_guards(live);
        }
    }

    /// Packets the egress check dropped since the last call, by cgroup, with the task
    /// whose guard that cgroup has (None: a cgroup below it). The totals stay in the
    /// kernel: a daemon that takes the maps over goes on from what its predecessor
    /// saved as reported ([`Sensors::seed_drops`]); without that, it reports them
    /// again rather than lose drops made while it was down.
    pub fn new_drops(&mut self) -> Vec<Drops> {
        let _rt = crate::kernel::preempt::hold();
        let mut out = Vec::new();
        for (cgroup, per_cpu) in self.net_drops.iter().filter_map(|r| r.ok()) {
            let total: u64 = per_cpu.iter().sum();
            let said = self.drops_said.entry(cgroup).or_default();
            if total > *said {
                let task = self.net_task.get(&cgroup, 0).ok();
                out.push(Drops { cgroup, task, new: total - *said, total });
                *said = total;
            }
        }
        out
    }

    /// The cgroups the network guard holds state for: guarded (NET_TASK) or with
    /// drops counted (NET_DROPS).
    pub fn guard_cgroups(&self) -> BTreeSet<u64> {
        let _rt = crate::kernel::preempt::hold();
        let guarded = self.net_task.keys().filter_map(|k| k.ok());
        guarded.chain(self.net_drops.keys().filter_map(|k| k.ok())).collect()
    }

    /// The enforced tasks' guarded cgroups and their tasks (NET_TASK).
    pub fn guarded(&self) -> Vec<(u64, u32)> {
        let _rt = crate::kernel::preempt::hold();
        self.net_task.iter().filter_map(|r| r.ok()).collect()
    }

    /// The drop totals a previous daemon reported of the maps taken over.
    pub fn seed_drops(&mut self, said: BTreeMap<u64, u64>) {
        self.drops_said = said;
    }

    /// The drop totals reported so far, by cgroup (for a successor).
    pub fn drops_said(&self) -> &BTreeMap<u64, u64> {
        &self.drops_said
    }

    /// Forgets the network guards of the cgroups in `gone` (no process is left in a
    /// removed cgroup): their NET_TASK entries, and their drop counts once reported.
    /// Address entries (allowed and denied) whose task no guard names any more go
    /// too, including any a failed or interrupted guard left (each time a guard
    /// went, and at the first call). A daemon runs for months: kept, these filled
    /// NET_TASK (4096) and NET_ALLOW, and every enforced task after was refused.
    /// With `count`, what is left.
    pub fn forget_guards(&mut self, gone: &BTreeSet<u64>, count: bool) -> Option<GuardEntries> {
        let _rt = crate::kernel::preempt::hold();
        let guards: Vec<(u64, u32)> = self.net_task.iter().filter_map(|r| r.ok()).collect();
        let kept: BTreeSet<u32> = guards.iter().filter(|(c, _)| !gone.contains(c)).map(|(_, t)| *t).collect();
        let going: Vec<u64> = guards.iter().map(|(c, _)| *c).filter(|c| gone.contains(c)).collect();
        let mut allow = None;
        if !going.is_empty() || !self.allow_swept || count {
            // Address entries first: a guard whose entries are gone refuses all.
            let keys: Vec<Key<NetKeyData>> = self.net_allow.keys().filter_map(|k| k.ok()).collect();
            let mut left = 0;
            for k in keys {
                let named = kept.contains(&cookie_of(&k));
                if named || self.net_allow.remove(&k).is_err() {
                    left += 1;
                }
            }
            self.allow_swept = true;
            allow = Some(left);
        }
        for c in &going {
            let _ = self.net_task.remove(c);
        }
        // Drop counts stay until reported (the next tick's record needs them).
        for c in gone {
            let total: u64 = self.net_drops.get(c, 0).map(|v| v.iter().sum()).unwrap_or(0);
            if self.drops_said.get(c).copied().unwrap_or(0) >= total {
                let _ = self.net_drops.remove(c);
                self.drops_said.remove(c);
            }
        }
        let guards = self.net_task.keys().filter_map(|k| k.ok()).count();
        (count && allow.is_some()).then(|| GuardEntries { guards, allow: allow.unwrap_or(0) })
    }

    /// Unpins everything: the programs detach when the sensors are dropped.
    pub fn unpin(&mut self) {
        if let Some(p) = self.pins.take()
            && let Err(e) = p.remove()
        {
            tracing::warn!("removing agentmon's pins in bpffs: {e}");
        }
    }

    /// Reads the per-kind counters.
    pub fn counts(&self) -> Counts {
        let _rt = crate::kernel::preempt::hold();
        let mut c = Counts::default();
        for k in kind::ALL.iter().filter(|k| **k != 0) {
            let slot = kind::slot(*k);
            for (i, out) in [(slot * 2, &mut c.emitted), (slot * 2 + 1, &mut c.lost)] {
                if let Ok(v) = self.counters.get(&i, 0) {
                    out.insert(*k, v.iter().sum());
                }
            }
        }
        // Anything counted in the catch-all slot is reported under kind 0.
        let last = COUNTER_SLOTS - 1;
        if let Ok(v) = self.counters.get(&(last * 2 + 1), 0) {
            let n: u64 = v.iter().sum();
            if n > 0 {
                c.lost.insert(0, n);
            }
        }
        c
    }
}
