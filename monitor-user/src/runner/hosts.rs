//! Host names in tasks' connect scopes, looked up again every minute off the loop:
//! a name's new addresses are added to the task's scope (the judge's and, for an
//! enforced task, the connect guard's); addresses it no longer resolves to stay
//! allowed until the task ends.
//!
//! A lookup blocks until whoever serves the name answers, and some take their time:
//! each name is looked up in a thread of its own, its answer taken at a later tick,
//! and a name still unanswered is not asked again, so that no name can stall every
//! task's events or pile up threads. A sub-task's names may have been accepted only
//! because a parent's address range covered their addresses at delegation: a new
//! address is taken only where every task up its chain still covers it, so that a
//! name whose records change cannot widen a sub-task beyond its parents.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, mpsc},
};

use super::engine::Engine;
use crate::task::{
    Task,
    scope::{Endpoint, Ports},
};

/// Addresses one name may come to allow (records that grow without end would fill
/// the guard's map).
const MAX_ADDRS: usize = 64;

/// The lookups in flight and their answers.
pub struct Refresh {
    asked: BTreeSet<String>,
    tx: mpsc::Sender<(String, Vec<IpAddr>)>,
    rx: mpsc::Receiver<(String, Vec<IpAddr>)>,
}

impl Default for Refresh {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Self { asked: BTreeSet::new(), tx, rx }
    }
}

impl Refresh {
    /// Looks up again every host name of a task's scope not still being looked up.
    pub fn start(e: &mut Engine) {
        let mut names = BTreeSet::new();
        for id in e.p.task_ids() {
            if let Some(b) = e.p.judge.task(&id) {
                names.extend(host_names(&b.task));
            }
        }
        let r = &mut e.hosts;
        for name in names {
            if r.asked.contains(&name) {
                continue;
            }
            let (tx, n) = (r.tx.clone(), name.clone());
            match crate::task::scope::lookup(name.clone(), move |a| {
                let _ = tx.send((n, a));
            }) {
                Ok(()) => {
                    r.asked.insert(name);
                }
                Err(why) => {
                    tracing::warn!("host names not looked up again: {why}");
                    break;
                }
            }
        }
    }

    /// Adds the addresses found since the last tick to the tasks naming them.
    pub fn finish(e: &mut Engine) {
        while let Ok((name, addrs)) = e.hosts.rx.try_recv() {
            e.hosts.asked.remove(&name);
            for id in e.p.task_ids() {
                if e.p.judge.task(&id).is_some_and(|b| host_names(&b.task).contains(&name)) {
                    apply(e, &id, &name, &addrs);
                }
            }
        }
    }
}

fn host_names(t: &Task) -> BTreeSet<String> {
    t.connect
        .iter()
        .filter_map(|e| match e {
            Endpoint::Host { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Adds to task `id` the addresses `name` has now that it may take.
fn apply(e: &mut Engine, id: &str, name: &str, now: &[IpAddr]) {
    let (Some(b), Some(cookie)) = (e.p.judge.task(id), e.p.contain.cookie(id)) else { return };
    let ancestors: Option<Vec<Arc<Task>>> =
        b.chain.iter().map(|p| e.p.judge.task(p).map(|a| a.task.clone())).collect();
    let denied = crate::policy::inline::deny_rules(e.p.judge.rules().rules.iter(), &b.task)
        .map(|i| i.net)
        .unwrap_or_default();
    let own_guard = b.chain.is_empty();
    let mut task = (*b.task).clone();
    let mut refused = Vec::new();
    let changed = widen(&mut task.connect, name, now, |ports, a| {
        // A denied net's address would win over the deny in the guard (its prefix is
        // longer); an address no parent covers would widen a sub-task (a parent gone
        // from here cannot say: nothing is taken).
        let within = ancestors.as_ref().is_some_and(|up| up.iter().all(|p| covered(p, name, ports, a)));
        let ok = within && !denied.iter().any(|d| d.contains(&a));
        if !ok {
            refused.push(a);
        }
        ok
    });
    if !refused.is_empty() {
        tracing::warn!(
            "task {id}: new addresses of {name} not allowed (outside a parent task's scope or denied): {refused:?}"
        );
    }
    if !changed {
        return;
    }
    // A sub-task has no network guard of its own (its parent's cgroup and guard).
    if task.enforce && own_guard {
        let added = crate::enforce::cgroup::allow_entries(cookie, &task.connect)
            .and_then(|allow| e.sensors.allow_more(&allow).map_err(|err| err.to_string()));
        if let Err(why) = added {
            // The judge keeps the old addresses too: what the guard refuses is not
            // called in scope.
            tracing::warn!("task {id}: the new addresses of {name} not allowed: {why}");
            return;
        }
    }
    e.p.judge.set_task(id, Arc::new(task));
}

/// Does `parent` allow `a` under `name` with `ports`?
fn covered(parent: &Task, name: &str, ports: Ports, a: IpAddr) -> bool {
    let ep = Endpoint::Host { name: name.to_string(), ports, addrs: vec![a] };
    parent.connect.iter().any(|m| m.covers(&ep))
}

/// Adds to each endpoint of `eps` for `name` the addresses of `now` that `take`
/// accepts (ports, address), at most [`MAX_ADDRS`] in all per endpoint. Whether
/// anything was added.
fn widen(
    eps: &mut [Endpoint],
    name: &str,
    now: &[IpAddr],
    mut take: impl FnMut(Ports, IpAddr) -> bool,
) -> bool {
    let mut changed = false;
    for ep in eps {
        let Endpoint::Host { name: n, ports, addrs } = ep else { continue };
        if n != name {
            continue;
        }
        for a in now {
            if addrs.len() >= MAX_ADDRS {
                break;
            }
            if !addrs.contains(a) && take(*ports, *a) {
                addrs.push(*a);
                changed = true;
            }
        }
        addrs.sort();
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host(name: &str, addrs: &[&str]) -> Endpoint {
        Endpoint::Host {
            name: name.into(),
            ports: Ports { lo: 443, hi: 443 },
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        }
    }

    fn task(connect: Vec<Endpoint>) -> Task {
        let mut t = crate::task::parse_unresolved(
            "id: t\nmode: execute\n",
            std::path::Path::new("t.yaml"),
            crate::event::Timestamp(0),
        )
        .expect("manifest");
        t.connect = connect;
        t
    }

    #[test]
    fn new_addresses_are_added_and_old_ones_kept() {
        let mut eps = vec![host("a.example", &["192.0.2.1"]), host("b.example", &["192.0.2.9"])];
        assert!(widen(&mut eps, "a.example", &[ip("192.0.2.2")], |_, _| true));
        assert_eq!(eps[0], host("a.example", &["192.0.2.1", "192.0.2.2"]));
        assert_eq!(eps[1], host("b.example", &["192.0.2.9"]), "another name's untouched");
        // No address now: nothing taken away.
        assert!(!widen(&mut eps, "b.example", &[], |_, _| true));
        assert_eq!(eps[1], host("b.example", &["192.0.2.9"]));
        assert!(
            !widen(&mut eps, "a.example", &[ip("192.0.2.2")], |_, _| true),
            "nothing new the second time"
        );
    }

    #[test]
    fn refused_addresses_are_not_added() {
        let mut eps = vec![host("a.example", &["192.0.2.1"])];
        assert!(!widen(&mut eps, "a.example", &[ip("203.0.113.5")], |_, a| a != ip("203.0.113.5")));
        assert_eq!(eps[0], host("a.example", &["192.0.2.1"]));
    }

    #[test]
    fn a_name_allows_a_bounded_number_of_addresses() {
        let mut eps = vec![host("a.example", &[])];
        let many: Vec<IpAddr> =
            (0..200u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i))).collect();
        assert!(widen(&mut eps, "a.example", &many, |_, _| true));
        let Endpoint::Host { addrs, .. } = &eps[0] else { unreachable!() };
        assert_eq!(addrs.len(), MAX_ADDRS);
    }

    #[test]
    fn a_sub_tasks_name_stays_within_its_parents_range() {
        // The parent allows 10.0.0.0/8:443; the sub-task's name resolved inside it at
        // delegation and now also resolves outside.
        let net = Endpoint::Net { net: "10.0.0.0/8".parse().unwrap(), ports: Ports { lo: 443, hi: 443 } };
        let parent = task(vec![net]);
        let p443 = Ports { lo: 443, hi: 443 };
        assert!(covered(&parent, "x.example", p443, ip("10.1.2.3")));
        assert!(!covered(&parent, "x.example", p443, ip("198.51.100.7")));
        assert!(!covered(&parent, "x.example", Ports { lo: 1, hi: 65535 }, ip("10.1.2.3")), "wider ports");
        // A parent allowing the name itself allows what the name resolves to.
        let by_name = task(vec![host("x.example", &["10.1.2.3"])]);
        assert!(covered(&by_name, "x.example", p443, ip("198.51.100.7")));
        assert!(!covered(&by_name, "y.example", p443, ip("10.1.2.3")));
    }
}
