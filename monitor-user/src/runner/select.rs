//! Selectors: processes that match (exe path glob, argv glob, cgroup path glob; every
//! field given must match) are attached by the daemon as an instance of the
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
}

impl Selector {
    /// From the configuration's glob texts; `Err(field: message)`.
    pub fn new(exe: Option<&str>, argv: Option<&str>, cgroup: Option<&str>) -> Result<Self, String> {
        let g = |f: &str, p: Option<&str>| -> Result<Option<GlobMatcher>, String> {
            p.map(|p| Glob::new(p).map(|g| g.compile_matcher()).map_err(|e| format!("{f}: {e}"))).transpose()
        };
        let s = Self { exe: g("exe", exe)?, argv: g("argv", argv)?, cgroup: g("cgroup", cgroup)? };
        if s.exe.is_none() && s.argv.is_none() && s.cgroup.is_none() {
            return Err("a selector needs exe, argv or cgroup".into());
        }
        Ok(s)
    }

    fn matches(&self, p: &Seen) -> bool {
        let ok = |m: &Option<GlobMatcher>, v: &Option<String>| match (m, v) {
            (None, _) => true,
            (Some(m), Some(v)) => m.is_match(v),
            (Some(_), None) => false,
        };
        ok(&self.exe, &p.exe) && ok(&self.argv, &p.argv) && ok(&self.cgroup, &p.cgroup)
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
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(String::from)));
    Seen { exe, argv, cgroup }
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
            if !sel.rules.iter().any(|s| s.matches(&p)) {
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
        let s = Selector::new(Some("/usr/bin/claude*"), Some("*--agent*"), None).unwrap();
        let p = |exe: &str, argv: &str| Seen { exe: Some(exe.into()), argv: Some(argv.into()), cgroup: None };
        assert!(s.matches(&p("/usr/bin/claude-code", "claude --agent x")));
        assert!(!s.matches(&p("/usr/bin/claude-code", "claude")));
        assert!(!s.matches(&p("/usr/bin/python3", "python3 --agent")));
        let c = Selector::new(None, None, Some("/agents.slice/*")).unwrap();
        assert!(c.matches(&Seen { exe: None, argv: None, cgroup: Some("/agents.slice/a.scope".into()) }));
        assert!(!c.matches(&Seen { exe: None, argv: None, cgroup: None }));
        assert!(Selector::new(None, None, None).is_err());
        assert!(Selector::new(Some("[unclosed"), None, None).unwrap_err().starts_with("exe:"));
    }

    #[test]
    fn instance_ids() {
        assert_eq!(with_id("id: agent\nmode: read\n", 42), "id: agent-42\nmode: read\n");
        assert_eq!(with_id("mode: read\nid: \"a\"\n", 7), "mode: read\nid: a-7\n");
    }
}
