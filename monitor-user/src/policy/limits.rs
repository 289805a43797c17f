//! A task's impact thresholds (`limits:` in its manifest): what it may change in
//! all before agentmon steps in — distinct files changed, deletes, processes,
//! connections, distinct destinations. Counted over the task and every sub-task
//! delegated from it (a sub-task must not be a way around its parent's budget);
//! only what happened counts (a refused call changed nothing). The first event past
//! a limit is a violation with the task's `on_exceed` action; later ones are not
//! findings again. Pure: events in, at most one reason out.

use std::collections::{BTreeSet, HashSet};

use super::{Action, Reason, Severity, VerdictKind};
use crate::{
    event::{Event, Kind},
    task::Limits,
};

/// What a task (with its sub-tasks) has done so far.
#[derive(Debug, Default)]
pub struct Usage {
    changed: HashSet<String>,
    deletes: u64,
    processes: u64,
    connections: u64,
    destinations: HashSet<String>,
    /// The limits already reported as exceeded.
    exceeded: BTreeSet<&'static str>,
}

fn changes_a_file(k: Kind) -> bool {
    matches!(
        k,
        Kind::FileWrite
            | Kind::FileCreate
            | Kind::FileDelete
            | Kind::FileRename
            | Kind::FileTruncate
            | Kind::FileChmod
            | Kind::FileChown
            | Kind::FileXattr
            | Kind::FileLink
            | Kind::DirCreate
    )
}

/// Adds `v` to `set` while the set holds at most `max` (one past the limit is all
/// a count needs): an agent making paths in a loop must not grow agentmon without end.
fn add_bounded(set: &mut HashSet<String>, v: &str, max: u64) {
    if set.len() as u64 <= max && !set.contains(v) {
        set.insert(v.to_string());
    }
}

impl Usage {
    /// Counts `ev` against `limits`; the reason, the first time a limit is passed.
    pub fn count(&mut self, limits: &Limits, ev: &Event) -> Option<Reason> {
        // A call that failed changed nothing; a connect that failed after it left
        // (refused, timed out, interrupted, in progress) still reached out.
        let refused = matches!(ev.error.as_deref(), Some("EACCES" | "EPERM"));
        let reached = ev.kind == Kind::Connect && !refused;
        if ev.error.is_some() && !reached {
            return None;
        }
        let mut now: Vec<(&'static str, u64, Option<u64>)> = Vec::new();
        if let Some(max) = limits.files_changed.filter(|_| changes_a_file(ev.kind)) {
            for p in [&ev.path, &ev.new_path].into_iter().flatten() {
                add_bounded(&mut self.changed, p, max);
            }
            now.push(("files_changed", self.changed.len() as u64, Some(max)));
        }
        if ev.kind == Kind::FileDelete {
            self.deletes += 1;
            now.push(("deletes", self.deletes, limits.deletes));
        }
        if ev.kind == Kind::Fork {
            self.processes += 1;
            now.push(("processes", self.processes, limits.processes));
        }
        // Connections: TCP (a UDP connect sends nothing; a unix socket is local).
        let ip = match &ev.dst {
            Some(crate::event::Dst::Ip { ip, .. }) => Some(ip),
            _ => None,
        };
        if ev.kind == Kind::Connect && ip.is_some() && ev.proto.as_deref() != Some("udp") {
            self.connections += 1;
            now.push(("connections", self.connections, limits.connections));
        }
        // Destinations: distinct addresses (whatever the port) connected or sent to.
        if let (Some(max), Some(ip)) =
            (limits.destinations, ip.filter(|_| matches!(ev.kind, Kind::Connect | Kind::Send)))
        {
            add_bounded(&mut self.destinations, ip, max);
            now.push(("destinations", self.destinations.len() as u64, Some(max)));
        }
        // The first limit this event passes that was not said before.
        let (what, n, max) = now
            .into_iter()
            .filter_map(|(w, n, max)| Some((w, n, max?)))
            .find(|(w, n, max)| n > max && !self.exceeded.contains(w))?;
        self.exceeded.insert(what);
        Some(Reason {
            verdict: VerdictKind::Violation,
            action: limits.on_exceed,
            severity: Severity::High,
            rule: None,
            clause: Some("limits"),
            message: format!("past the task's limit of {max} {} ({n})", what.replace('_', " ")),
            burst: 0,
        })
    }
}

/// The actions a task may take when it passes a limit.
pub const ON_EXCEED: [(&str, Action); 3] =
    [("alert", Action::Alert), ("freeze", Action::Freeze), ("kill", Action::Kill)];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Dst, Timestamp};

    fn ev(kind: Kind, path: &str) -> Event {
        let mut e = Event::new(kind, Timestamp(0), "h".into());
        e.path = Some(path.into());
        e
    }

    #[test]
    fn a_limit_is_passed_once_and_only_by_what_happened() {
        let l = Limits {
            files_changed: Some(2),
            deletes: Some(1),
            on_exceed: Action::Freeze,
            ..Default::default()
        };
        let mut u = Usage::default();
        assert!(u.count(&l, &ev(Kind::FileWrite, "/a")).is_none());
        assert!(u.count(&l, &ev(Kind::FileWrite, "/a")).is_none(), "the same file again");
        let mut refused = ev(Kind::FileCreate, "/c");
        refused.error = Some("EACCES".into());
        assert!(u.count(&l, &refused).is_none(), "a refused call changed nothing");
        assert!(u.count(&l, &ev(Kind::FileCreate, "/b")).is_none());
        let r = u.count(&l, &ev(Kind::FileTruncate, "/d")).expect("the third file");
        assert_eq!((r.verdict, r.action, r.clause), (VerdictKind::Violation, Action::Freeze, Some("limits")));
        assert!(r.message.contains("limit of 2 files changed (3)"), "{}", r.message);
        assert!(u.count(&l, &ev(Kind::FileWrite, "/e")).is_none(), "said once");
        for i in 0..1000 {
            u.count(&l, &ev(Kind::FileWrite, &format!("/many/{i}")));
        }
        assert_eq!(u.changed.len(), 3, "kept one past the limit, no more");
        // Deletes: their own limit (the deleted files were counted as changed already).
        assert!(u.count(&l, &ev(Kind::FileDelete, "/a")).is_none());
        let r = u.count(&l, &ev(Kind::FileDelete, "/b")).expect("the second delete");
        assert!(r.message.contains("1 deletes (2)"), "{}", r.message);
    }

    #[test]
    fn processes_connections_and_destinations() {
        let l = Limits {
            processes: Some(1),
            connections: Some(2),
            destinations: Some(1),
            on_exceed: Action::Alert,
            ..Default::default()
        };
        let mut u = Usage::default();
        assert!(u.count(&l, &ev(Kind::Fork, "")).is_none());
        assert!(u.count(&l, &ev(Kind::Fork, "")).is_some());
        let conn = |ip: &str, err: Option<&str>| {
            let mut e = ev(Kind::Connect, "");
            e.path = None;
            e.dst = Some(Dst::Ip { ip: ip.into(), port: 443 });
            e.error = err.map(|s| s.to_string().into());
            e
        };
        assert!(u.count(&l, &conn("10.0.0.1", Some("EINPROGRESS"))).is_none());
        assert!(u.count(&l, &conn("10.0.0.1", Some("EACCES"))).is_none(), "refused: did not leave");
        let mut udp = conn("10.0.0.1", None);
        udp.proto = Some("udp".into());
        assert!(u.count(&l, &udp).is_none(), "a UDP connect is no connection");
        let r = u.count(&l, &conn("10.0.0.2", None)).expect("a second destination");
        assert!(r.message.contains("1 destinations (2)"), "{}", r.message);
        // Refused by the peer, it still reached out: the third connection.
        let r = u.count(&l, &conn("10.0.0.1", Some("ECONNREFUSED"))).expect("a third connection");
        assert!(r.message.contains("2 connections (3)"), "{}", r.message);
    }
}
