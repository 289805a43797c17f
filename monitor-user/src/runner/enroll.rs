//! What binding a task puts in the kernel and the host: its plan on the BPF LSM tier
//! (its grants, agentmon's own files marked), its cgroup with the network guard and
//! its allowlist, and its processes tracked (a running tree scanned until nothing
//! new appears). `tasks` and `subtask` bind through these.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{RunError, setup::Setup, tasks::START_PATHS};
use crate::{
    ctl,
    enforce::{self, cgroup::TaskCgroup},
    kernel::loader::Sensors,
    policy::RuleSet,
    proctable::Proc,
    realpath::Wait,
    task::Task,
};

/// Loads enforced `task`'s plan for the BPF LSM tier under cookie `c` (`up`: the
/// task it was delegated from, or 0; and its top-level task, whose share of the
/// lookups it takes), with agentmon's own files marked. For a
/// `resumed` task, a granted path that is gone or now leads elsewhere through a
/// symlink the task could have planted is not granted (said in what it returns)
/// rather than refusing the task:
/// its processes run already, and must stay held.
pub fn enroll_in(
    sensors: &mut Sensors,
    setup: &Setup,
    c: u32,
    task: &Task,
    launch: &[PathBuf],
    (up, top): (u32, u32),
    resumed: bool,
) -> Result<Vec<String>, RunError> {
    // Every path below is the task's (or its launcher's) to name, and may be on a
    // file system that does not answer: looked at in workers, each bounded
    // (realpath). Each, not all: a task may be granted thousands of files, which a
    // slow machine (an emulated guest) does not open in a second; what does not
    // answer is bounded by its share (two stuck, and the rest are refused at once).
    let w = || Wait::task(top, START_PATHS);
    let (t, l) = (task.clone(), launch.to_vec());
    let planned = crate::worker::RESOLVERS.run(w().who, START_PATHS, move || enforce::lsm::plan(&t, &l));
    let mut skipped = Vec::new();
    let plan = match planned {
        Ok(p) => p,
        // A resumed task's processes run already and must stay held: held to
        // nothing granted (fail closed), said, rather than left unbound.
        Err(stuck) if resumed => {
            skipped.push(format!("its files were not looked at in time ({stuck:?}): nothing granted"));
            Ok(enforce::lsm::Plan { flags: enforce::lsm::flags(task), grants: Vec::new() })
        }
        Err(stuck) => Err(("scope", format!("its files were not looked at in time ({stuck:?})"))),
    }
    .map_err(|(clause, why)| enforce::EnforceError::Refused { task: task.id.clone(), clause, why })?;
    // Before anything is enforced, or asked of file_open (kernel::loader::hooks).
    sensors.arm_lsm()?;
    let Some(maps) = sensors.lsm.as_mut() else {
        return Err(RunError::Load(crate::kernel::loader::LoadError::Map("FS_RULES")));
    };
    if task.deny_sensitive_reads
        && let Err(why) = &maps.sensitive_exact
    {
        return Err(enforce::EnforceError::Refused {
            task: task.id.clone(),
            clause: "sensitive_reads",
            why: format!("the sensitive set cannot be matched exactly in the kernel: {why}"),
        }
        .into());
    }
    protect_own(maps, setup)?;
    let refuse = |why: String| enforce::EnforceError::Refused { task: task.id.clone(), clause: "scope", why };
    let mut grants = Vec::with_capacity(plan.grants.len());
    // A resumed task's grant reached through a symlink it could have planted: a
    // directory on the way that resolves elsewhere now, or a last component in a
    // directory the task may write. (A program that is a link by nature, such as
    // /usr/bin/sh, was granted so at the start too.)
    let planted = |p: &Path, real: &Path| {
        real != p
            && p.parent().is_some_and(|d| {
                crate::realpath::canonicalize(d, Some(&w())).ok().as_deref() != Some(d)
                    || task.write.reaches(d)
            })
    };
    for (p, r) in &plan.grants {
        let real = match crate::realpath::canonicalize(p, Some(&w())) {
            Ok(real) if resumed && planted(p, &real) => {
                skipped.push(format!(
                    "{} now leads to {} through a symlink: not granted",
                    p.display(),
                    real.display()
                ));
                continue;
            }
            Ok(real) => real,
            Err(e) if resumed => {
                skipped.push(format!("{}: {e}: not granted", p.display()));
                continue;
            }
            Err(e) => return Err(refuse(format!("{}: {e}", p.display())).into()),
        };
        // A delegated scope was checked against its parent's by its text: a symlink
        // in it would carry a grant to wherever it points. (A resumed sub-task's
        // runs already: not granted, said, rather than left unbound.)
        if up != 0 && real != *p && resumed {
            skipped.push(format!(
                "{} now leads to {} through a symlink: not granted",
                p.display(),
                real.display()
            ));
            continue;
        }
        if up != 0 && real != *p {
            return Err(refuse(format!(
                "{} is reached through a symlink (it is {}): a sub-task's scope must name real paths",
                p.display(),
                real.display()
            ))
            .into());
        }
        let k = match maps.ident_within(&real, true, &crate::worker::RESOLVERS, &w()) {
            Ok(k) => k,
            Err(e) if resumed => {
                skipped.push(format!("{}: {e}: not granted", real.display()));
                continue;
            }
            Err(e) => return Err(refuse(format!("{}: {e}", real.display())).into()),
        };
        grants.push((k, *r));
    }
    let l = monitor_common::lsm::LsmTask { flags: plan.flags, rules: c, up, _pad: 0 };
    maps.enroll(c, l, &grants)?;
    Ok(skipped)
}

/// Tracks `root` and the tree under it under cookie `c`. A process forked between a
/// scan and the tracking of its parent is not inherited: scan until a scan finds
/// nothing new. Processes of other tasks stay theirs.
pub(super) fn attach_tree(sensors: &mut Sensors, root: u32, c: u32) -> Result<Vec<u32>, RunError> {
    let mut pids = Vec::new();
    for _ in 0..8 {
        let new: Vec<u32> =
            tree(root).into_iter().filter(|p| !pids.contains(p) && sensors.task_of(*p).is_none()).collect();
        if new.is_empty() {
            break;
        }
        for &pid in &new {
            sensors.track(pid, c)?;
        }
        pids.extend(new);
    }
    Ok(pids)
}

/// Creates the task's cgroup and moves the root into it; an enforced task's gets the
/// network guard with its allowlist first. Without cgroups an observed task runs
/// without one (no freeze); an enforced task was refused before this.
pub(super) fn task_cgroup(
    sensors: &mut Sensors,
    t: &Task,
    root: u32,
    setup: &Setup,
    cookie: u32,
    allow: &[(u32, monitor_common::NetKeyData, monitor_common::NetPorts)],
    prepared: Option<super::prepared::Reserved>,
) -> Result<Option<(TaskCgroup, bool)>, RunError> {
    if !setup.layers.cgroups {
        return Ok(None);
    }
    let name = format!("{}-{cookie}", std::process::id());
    let made = match prepared {
        // Made for it before its root (which may be in it already).
        Some(p) => Ok((p.cg, p.nested)),
        None => {
            let origin = enforce::cgroup::of_pid(root);
            TaskCgroup::create_for(&name, origin.as_deref()).map(|(mut cg, why)| {
                if let Some(why) = &why {
                    tracing::info!("task {}: its cgroup is agentmon's, not beneath its own: {why}", t.id);
                }
                cg.origin = origin;
                (cg, why.is_none())
            })
        }
    };
    let mut left = None;
    let (mut cg, nested) = match made {
        Ok(made) => made,
        Err(err) if !t.enforce => {
            tracing::warn!("task {} runs without a cgroup of its own (it cannot be frozen): {err}", t.id);
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    if t.enforce
        && let Err(err) = sensors.guard(&cg.open()?, cg.id, cookie, allow)
    {
        // Beneath a cgroup whose own program refuses others (attached exclusive):
        // agentmon's directory, as for any cgroup it may not nest in.
        if !nested {
            return Err(err.into());
        }
        tracing::info!("task {}: its cgroup is agentmon's, not beneath its own: the guard: {err}", t.id);
        let origin = cg.origin.take();
        // Removed once the root, if it was made there, has moved out.
        left = Some(std::mem::replace(&mut cg, TaskCgroup::create(&name)?));
        cg.origin = origin;
        sensors.guard(&cg.open()?, cg.id, cookie, allow)?;
    }
    // A root made in it is not moved (a move waits for an RCU grace period).
    let made_in = cg.holds(root);
    if !made_in {
        cg.add(root)?;
    }
    drop(left);
    // The task's now: left in place if it still has processes when let go of.
    cg.grave = None;
    Ok(Some((cg, made_in)))
}

/// The network guard's entries for enforced task `t` (cookie `cookie`): its connect
/// scope, then the addresses its deny rules refuse whatever the scope allows.
pub fn guard_entries(
    t: &Task,
    cookie: u32,
    rules: &RuleSet,
) -> Result<Vec<(u32, monitor_common::NetKeyData, monitor_common::NetPorts)>, RunError> {
    let refuse = |clause: &'static str, why: String| enforce::EnforceError::Refused {
        task: t.id.clone(),
        clause,
        why,
    };
    let mut allow =
        enforce::cgroup::allow_entries(cookie, &t.connect).map_err(|why| refuse("scope.connect", why))?;
    let inline =
        crate::policy::inline::deny_rules(rules.rules.iter(), t).map_err(|why| refuse("rules", why))?;
    // The guard takes the longest prefix: an allowed net or address inside a denied
    // net would win over the deny.
    for ep in &t.connect {
        let nets: Vec<ipnet::IpNet> = match ep {
            crate::task::scope::Endpoint::Net { net, .. } => vec![*net],
            crate::task::scope::Endpoint::Host { addrs, .. } => {
                addrs.iter().map(|a| ipnet::IpNet::from(*a)).collect()
            }
            crate::task::scope::Endpoint::Unix { .. } => Vec::new(),
        };
        for net in nets {
            if let Some(d) = inline.net.iter().find(|d| d.contains(&net) && net.prefix_len() > d.prefix_len())
            {
                let why = format!(
                    "{net} is allowed inside {d}, which a deny rule refuses: in the guard the allow would win"
                );
                return Err(refuse("scope.connect", why).into());
            }
        }
    }
    allow.extend(enforce::cgroup::deny_entries(cookie, &inline.net));
    Ok(allow)
}

/// Marks agentmon's own files that exist (one not created yet has nothing to
/// protect; its directory is in the list when it matters) on the BPF LSM tier.
pub(super) fn protect_own(
    maps: &mut crate::kernel::lsm::LsmMaps,
    setup: &Setup,
) -> Result<(), crate::kernel::loader::LoadError> {
    let mut known =
        |paths: &[PathBuf]| -> Vec<_> { paths.iter().filter_map(|p| maps.ident(p, false).ok()).collect() };
    let protected = known(&setup.protected);
    let secrets = known(&setup.secrets);
    maps.protect(&protected, &secrets)
}

/// `pid` and its descendants now (children first found through /proc).
pub(super) fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let procs: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, ctl::ppid_of(p)?)))
        .collect();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(procs.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    all
}

/// What /proc says of a process bound after it started.
pub(super) fn proc_of(pid: u32, task: u32) -> Proc {
    let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).ok();
    Proc {
        ppid: ctl::ppid_of(pid),
        comm: read("comm").map(|c| String::from_utf8_lossy(&c).trim_end().to_string()).unwrap_or_default(),
        exe: std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| Arc::from(p.to_string_lossy().as_ref())),
        argv: read("cmdline").map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        }),
        task,
        ..Default::default()
    }
}
