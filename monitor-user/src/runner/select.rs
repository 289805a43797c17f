//! Selectors: processes that match (exe path glob, argv glob, cgroup path glob,
//! container id glob, pod uid glob; every field given must match) are attached by the daemon as an instance of the
//! configured default task, `<id>-<pid>`, with their descendants.
//!
//! Found by scanning /proc for new processes four times a second: an agent binary is
//! picked up within ~250 ms of its start, and what it did before (and the whole life
//! of a process shorter than that) is not seen. Matching at exec in the kernel is the
//! precise alternative, not built yet.

use std::{collections::HashMap, path::PathBuf};

use globset::{Glob, GlobMatcher};

use super::{
    engine::Engine,
    tasks::{self, StartReq},
};

#[derive(Debug, Clone)]
pub struct Selector {
    pub exe: Option<GlobMatcher>,
    pub argv: Option<GlobMatcher>,
    pub cgroup: Option<GlobMatcher>,
    /// The container's id (as events carry it: `container.id`).
    pub container: Option<GlobMatcher>,
    /// The Kubernetes pod's uid.
    pub pod: Option<GlobMatcher>,
}

/// A selector's glob texts, as configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Globs<'a> {
    pub exe: Option<&'a str>,
    pub argv: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub container: Option<&'a str>,
    pub pod: Option<&'a str>,
}

impl Selector {
    /// From the configuration's glob texts; `Err(field: message)`.
    pub fn new(t: Globs) -> Result<Self, String> {
        let g = |f: &str, p: Option<&str>| -> Result<Option<GlobMatcher>, String> {
            p.map(|p| Glob::new(p).map(|g| g.compile_matcher()).map_err(|e| format!("{f}: {e}"))).transpose()
        };
        let s = Self {
            exe: g("exe", t.exe)?,
            argv: g("argv", t.argv)?,
            cgroup: g("cgroup", t.cgroup)?,
            container: g("container", t.container)?,
            pod: g("pod", t.pod)?,
        };
        if [&s.exe, &s.argv, &s.cgroup, &s.container, &s.pod].iter().all(|m| m.is_none()) {
            return Err("a selector needs exe, argv, cgroup, container or pod".into());
        }
        Ok(s)
    }

    fn matches(&self, p: &Seen) -> bool {
        let ok = |m: &Option<GlobMatcher>, v: Option<&str>| match (m, v) {
            (None, _) => true,
            (Some(m), Some(v)) => m.is_match(v),
            (Some(_), None) => false,
        };
        let (container, pod) = p.cgroup.as_deref().map(crate::container::of_cgroup).unwrap_or_default();
        ok(&self.exe, p.exe.as_deref())
            && ok(&self.argv, p.argv.as_deref())
            && ok(&self.cgroup, p.cgroup.as_deref())
            && ok(&self.container, container.as_ref().map(|c| c.id.as_str()))
            && ok(&self.pod, pod.as_ref().map(|p| p.uid.as_str()))
    }
}

#[derive(Debug, Clone)]
pub struct Selectors {
    pub rules: Vec<Selector>,
    /// The default task's manifest file and text.
    pub task_file: PathBuf,
    pub manifest: String,
}

struct Seen {
    exe: Option<String>,
    argv: Option<String>,
    cgroup: Option<String>,
}

fn look(pid: u32) -> Seen {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned());
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|c| {
        c.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    });
    Seen { exe, argv, cgroup: crate::enforce::cgroup::of_pid(pid) }
}

/// Start time (clock ticks since boot) of `pid`: a pid reused is a new process.
fn start_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(19)?.parse().ok()
}

/// Processes already looked at (pid → start time, exe): a process that execs
/// something else (a wrapper script's `exec agent`) is looked at again.
#[derive(Default)]
pub struct Scanner {
    seen: HashMap<u32, (u64, Option<PathBuf>)>,
}

impl Scanner {
    /// Attaches every new matching process that is in no task; the ids started.
    pub fn scan(&mut self, sel: &Selectors, e: &mut Engine) -> Vec<String> {
        let me = std::process::id();
        let mut alive = HashMap::with_capacity(self.seen.len());
        let mut started = Vec::new();
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for pid in pids {
            let Some(start) = start_of(pid) else { continue };
            let key = (start, std::fs::read_link(format!("/proc/{pid}/exe")).ok());
            let known = self.seen.get(&pid) == Some(&key);
            alive.insert(pid, key);
            if known || pid == me || e.sensors.task_of(pid).is_some() {
                continue;
            }
            let p = look(pid);
            // Untracked in a task's cgroup: still that task's (start() refuses it too;
            // asked here from what was read, so that it is not refused every scan).
            if p.cgroup.as_deref().is_some_and(crate::enforce::cgroup::is_task_path)
                || !sel.rules.iter().any(|s| s.matches(&p))
            {
                continue;
            }
            let req = StartReq {
                manifest: with_id(&sel.manifest, pid),
                file: sel.task_file.display().to_string(),
                pid,
                enforce: false,
                events: None,
                attach: true,
                grant: None,
                launch: Vec::new(),
                lsm: None,
                keeper: None,
                closed_fds: Vec::new(),
                asker: 0,
                prepared: None,
            };
            let r = tasks::start(e, me, req);
            match (r.ok, r.task, r.error) {
                (true, Some(id), _) => started.push(id),
                (_, _, e) => {
                    tracing::warn!("selector matched pid {pid} ({:?}) but: {}", p.exe, e.unwrap_or_default())
                }
            }
        }
        self.seen = alive;
        started
    }
}

/// The default task's manifest with its id made `<id>-<pid>`.
fn with_id(manifest: &str, pid: u32) -> String {
    let mut out = String::with_capacity(manifest.len() + 8);
    let mut done = false;
    for line in manifest.lines() {
        match line.strip_prefix("id:") {
            Some(v) if !done => {
                let id = v.trim().trim_matches(['"', '\'']);
                out.push_str(&format!("id: {id}-{pid}\n"));
                done = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_every_given_field() {
        let s = Selector::new(Globs {
            exe: Some("/usr/bin/claude*"),
            argv: Some("*--agent*"),
            ..Default::default()
        })
        .unwrap();
        let p = |exe: &str, argv: &str| Seen { exe: Some(exe.into()), argv: Some(argv.into()), cgroup: None };
        assert!(s.matches(&p("/usr/bin/claude-code", "claude --agent x")));
        assert!(!s.matches(&p("/usr/bin/claude-code", "claude")));
        assert!(!s.matches(&p("/usr/bin/python3", "python3 --agent")));
        let c = Selector::new(Globs { cgroup: Some("/agents.slice/*"), ..Default::default() }).unwrap();
        assert!(c.matches(&Seen { exe: None, argv: None, cgroup: Some("/agents.slice/a.scope".into()) }));
        assert!(!c.matches(&Seen { exe: None, argv: None, cgroup: None }));
        assert!(Selector::new(Globs::default()).is_err());
        assert!(
            Selector::new(Globs { exe: Some("[unclosed"), ..Default::default() })
                .unwrap_err()
                .starts_with("exe:")
        );
        // A container by id, a pod by uid, from the process's cgroup.
        let id = "3f1c9a4e5b6d7c8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
        let pod = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let cg = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            pod.replace('-', "_")
        );
        let seen = Seen { exe: None, argv: None, cgroup: Some(cg) };
        let by = |g: Globs| Selector::new(g).unwrap().matches(&seen);
        assert!(by(Globs { container: Some("3f1c9a*"), ..Default::default() }));
        assert!(by(Globs { pod: Some(pod), ..Default::default() }));
        assert!(!by(Globs { container: Some("aaaa*"), ..Default::default() }));
        assert!(!by(Globs { pod: Some(pod), exe: Some("/x"), ..Default::default() }));
    }

    #[test]
    fn instance_ids() {
        assert_eq!(with_id("id: agent\nmode: read\n", 42), "id: agent-42\nmode: read\n");
        assert_eq!(with_id("mode: read\nid: \"a\"\n", 7), "mode: read\nid: a-7\n");
    }
}
