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
    collections::{BTreeSet, HashMap, HashSet},
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

/// Lookups a refresh may have running at once: the rest of the shared pool stays
/// for tasks' starts and delegations.
const MAX_RUNNING: usize = 32;
/// Refused addresses recorded one by one per task (each once per name); past that
/// they are counted.
const MAX_TOLD: usize = 1024;

/// What to say of a refused address.
#[derive(Debug, PartialEq, Eq)]
enum Tell {
    /// Not recorded before: a record of its own.
    New,
    /// Recorded already.
    Known,
    /// The task's records of refused addresses are full: counted.
    Over,
}

/// Refused addresses recorded, per task: (name, address). A task's own names (a
/// sub-task's are the agent's choice) can fill only its own share, and an ended
/// task's are dropped. At most [`MAX_TOLD_ALL`] in all, however many sub-tasks.
#[derive(Default)]
struct Told {
    by_task: HashMap<Arc<str>, HashSet<(String, IpAddr)>>,
    all: usize,
}

const MAX_TOLD_ALL: usize = 64 * MAX_TOLD;

impl Told {
    fn tell(&mut self, task: &Arc<str>, name: &str, a: IpAddr) -> Tell {
        let seen = self.by_task.entry(task.clone()).or_default();
        if seen.contains(&(name.to_string(), a)) {
            Tell::Known
        } else if seen.len() >= MAX_TOLD || self.all >= MAX_TOLD_ALL {
            Tell::Over
        } else {
            seen.insert((name.to_string(), a));
            self.all += 1;
            Tell::New
        }
    }

    fn keep(&mut self, live: &[Arc<str>]) {
        self.by_task.retain(|t, _| live.contains(t));
        self.all = self.by_task.values().map(HashSet::len).sum();
    }
}

/// The lookups in flight and their answers.
pub struct Refresh {
    asked: BTreeSet<String>,
    tx: mpsc::Sender<(String, Vec<IpAddr>)>,
    rx: mpsc::Receiver<(String, Vec<IpAddr>)>,
    told: Told,
}

impl Default for Refresh {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Self { asked: BTreeSet::new(), tx, rx, told: Default::default() }
    }
}

impl Refresh {
    /// Looks up again every host name of a task's scope not still being looked up:
    /// the operators' (top-level tasks') first, while fewer than [`MAX_RUNNING`]
    /// lookups run; then sub-tasks' (the agent's choice), within the agents' share
    /// ([`AGENTS_LOOKUPS`](crate::task::scope::AGENTS_LOOKUPS)).
    pub fn start(e: &mut Engine) {
        let (mut top, mut sub) = (BTreeSet::new(), BTreeSet::new());
        let ids = e.p.task_ids();
        e.hosts.told.keep(&ids);
        for id in ids {
            if let Some(b) = e.p.judge.task(&id) {
                // Remote parents' names were the root grantor's (a chain names no other).
                if b.local_chain().is_empty() { &mut top } else { &mut sub }.extend(host_names(&b.task));
            }
        }
        let r = &mut e.hosts;
        let mut left = 0;
        use crate::task::scope::Asker;
        let names = top
            .iter()
            .map(|n| (n, Asker::Operator { cap: MAX_RUNNING }))
            .chain(sub.difference(&top).map(|n| (n, Asker::Agent)));
        for (name, who) in names {
            if r.asked.contains(name) {
                continue;
            }
            let (tx, n) = (r.tx.clone(), name.clone());
            match crate::task::scope::lookup(name.clone(), who, move |a| {
                let _ = tx.send((n, a));
            }) {
                Ok(()) => {
                    r.asked.insert(name.clone());
                }
                Err(_) => left += 1,
            }
        }
        if left > 0 {
            tracing::warn!("{left} host names not looked up again: too many lookups still running");
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
    t.connect.iter().filter_map(Endpoint::host).map(|(n, _)| n.to_string()).collect()
}

/// Adds to task `id` the addresses `name` has now that it may take; those it may
/// not are recorded (once each).
fn apply(e: &mut Engine, id: &str, name: &str, now: &[IpAddr]) {
    let (Some(b), Some(cookie)) = (e.p.judge.task(id), e.p.contain.cookie(id)) else { return };
    let ancestors: Option<Vec<Arc<Task>>> =
        b.local_chain().iter().map(|p| e.p.judge.task(p).map(|a| a.task.clone())).collect();
    // Rules that cannot be checked against the task now take nothing.
    let denied = crate::policy::inline::deny_rules(e.p.judge.rules().rules.iter(), &b.task).map(|i| i.net);
    let (own_guard, root, key) = (b.local_chain().is_empty(), b.root, b.id.clone());
    let mut task = (*b.task).clone();
    let mut refused = Vec::new();
    let changed = widen(&mut task.connect, name, now, |ports, had, a| {
        let why = if !ancestors.as_ref().is_some_and(|up| up.iter().all(|p| covered(p, name, ports, a))) {
            // An address no parent covers would widen a sub-task (a parent gone from
            // here cannot say: nothing is taken).
            Some("outside a parent task's scope")
        } else if !denied.as_ref().is_ok_and(|d| !d.iter().any(|n| n.contains(&a))) {
            // A denied net's address would win over the deny in the guard (its prefix
            // is longer).
            Some("in a net a deny rule refuses")
        } else if !takes(had, a) {
            Some("of a kind the name did not resolve to before (DNS rebinding)")
        } else {
            None
        };
        if let Some(why) = why {
            refused.push((a, why));
        }
        why.is_none()
    });
    let mut counted = 0;
    for (a, why) in refused {
        match e.hosts.told.tell(&key, name, a) {
            Tell::New => {
                let what = format!("{name} now resolves to {a}, {why}: not allowed");
                e.tamper(root, Some(cookie), "host addresses", &what, true);
            }
            Tell::Known => {}
            Tell::Over => counted += 1,
        }
    }
    if counted > 0 {
        let what = format!(
            "{name} now resolves to {counted} more addresses not allowed (past {MAX_TOLD} recorded for the \
             task, counted, not listed)"
        );
        e.tamper(root, Some(cookie), "host addresses", &what, true);
    }
    if !changed {
        return;
    }
    // A sub-task has no network guard of its own (its parent's cgroup and guard).
    if task.enforce && own_guard {
        let mut entries = match crate::enforce::cgroup::allow_entries(cookie, &task.connect) {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!("task {id}: the new addresses of {name} not allowed: {why}");
                return;
            }
        };
        // Written after the allow entries, as at the start: a deny entry for the very
        // same net wins the tie, and rewriting the allow entries must not undo it.
        entries.extend(crate::enforce::cgroup::deny_entries(cookie, denied.as_deref().unwrap_or_default()));
        if let Err(err) = e.sensors.allow_more(&entries) {
            // The judge keeps the old addresses: what the guard may refuse is not
            // called in scope.
            tracing::warn!("task {id}: the new addresses of {name} not allowed: {err}");
            return;
        }
    }
    if let Some(st) = &e.setup.state {
        st.update(id, |s| s.scope.as_mut().map(|p| p.set_hosts(&task)).is_some());
    }
    e.p.judge.set_task(id, Arc::new(task));
}

/// How far an address reaches: a name that resolved to public addresses and now
/// resolves to this host, the local network or the link (a cloud's metadata
/// service) is being rebound, not moved.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    Public,
    Private,
    Loopback,
    Link,
    Other,
}

fn reach(a: IpAddr) -> Reach {
    match a {
        IpAddr::V4(v) if v.is_loopback() => Reach::Loopback,
        IpAddr::V4(v) if v.is_link_local() => Reach::Link,
        // RFC 1918 and the carrier-grade NAT range (100.64.0.0/10).
        IpAddr::V4(v) if v.is_private() || (v.octets()[0] == 100 && v.octets()[1] & 0xc0 == 64) => {
            Reach::Private
        }
        IpAddr::V4(v) if v.is_unspecified() || v.is_multicast() || v.is_broadcast() => Reach::Other,
        IpAddr::V6(v) if v.is_loopback() => Reach::Loopback,
        IpAddr::V6(v) if v.is_unicast_link_local() => Reach::Link,
        IpAddr::V6(v) if v.is_unique_local() => Reach::Private,
        IpAddr::V6(v) if v.is_unspecified() || v.is_multicast() => Reach::Other,
        _ => Reach::Public,
    }
}

/// May a name that resolved to `had` take `a` too? A public address, or one of a
/// kind it had.
fn takes(had: &[IpAddr], a: IpAddr) -> bool {
    let r = reach(a);
    r == Reach::Public || had.iter().any(|h| reach(*h) == r)
}

/// Does `parent` allow `a` under `name` with `ports`?
fn covered(parent: &Task, name: &str, ports: Ports, a: IpAddr) -> bool {
    let ep = Endpoint::Host { name: name.to_string(), ports, addrs: vec![a] };
    parent.connect.iter().any(|m| m.covers(&ep))
}

/// Adds to each endpoint of `eps` for `name` the addresses of `now` that `take`
/// accepts (ports, the endpoint's addresses before, address), at most
/// [`MAX_ADDRS`] in all per endpoint. Whether anything was added.
fn widen(
    eps: &mut [Endpoint],
    name: &str,
    now: &[IpAddr],
    mut take: impl FnMut(Ports, &[IpAddr], IpAddr) -> bool,
) -> bool {
    let mut changed = false;
    for ep in eps {
        let Endpoint::Host { name: n, ports, addrs } = ep else { continue };
        if n != name {
            continue;
        }
        let had = addrs.clone();
        for a in now {
            if addrs.len() >= MAX_ADDRS {
                break;
            }
            if !addrs.contains(a) && take(*ports, &had, *a) {
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
            crate::task::scope::Resolve::Here,
        )
        .expect("manifest");
        t.connect = connect;
        t
    }

    #[test]
    fn refused_addresses_are_told_once_and_counted_past_a_tasks_share() {
        let (mut t, a, b): (Told, Arc<str>, Arc<str>) = (Told::default(), "a".into(), "b".into());
        assert_eq!(t.tell(&a, "n.example", ip("192.0.2.1")), Tell::New);
        assert_eq!(t.tell(&a, "n.example", ip("192.0.2.1")), Tell::Known);
        for i in 1..MAX_TOLD {
            assert_eq!(t.tell(&a, "n.example", IpAddr::from([10, 0, (i >> 8) as u8, i as u8])), Tell::New);
        }
        assert_eq!(t.tell(&a, "n.example", ip("198.51.100.1")), Tell::Over);
        // Another task's share is its own; an ended task's is dropped.
        assert_eq!(t.tell(&b, "n.example", ip("198.51.100.1")), Tell::New);
        t.keep(std::slice::from_ref(&b));
        assert_eq!(t.tell(&a, "n.example", ip("198.51.100.1")), Tell::New);
        assert_eq!(t.tell(&b, "n.example", ip("198.51.100.1")), Tell::Known);
    }

    #[test]
    fn new_addresses_are_added_and_old_ones_kept() {
        let mut eps = vec![host("a.example", &["192.0.2.1"]), host("b.example", &["192.0.2.9"])];
        assert!(widen(&mut eps, "a.example", &[ip("192.0.2.2")], |_, _, _| true));
        assert_eq!(eps[0], host("a.example", &["192.0.2.1", "192.0.2.2"]));
        assert_eq!(eps[1], host("b.example", &["192.0.2.9"]), "another name's untouched");
        // No address now: nothing taken away.
        assert!(!widen(&mut eps, "b.example", &[], |_, _, _| true));
        assert_eq!(eps[1], host("b.example", &["192.0.2.9"]));
        assert!(
            !widen(&mut eps, "a.example", &[ip("192.0.2.2")], |_, _, _| true),
            "nothing new the second time"
        );
    }

    #[test]
    fn refused_addresses_are_not_added() {
        let mut eps = vec![host("a.example", &["192.0.2.1"])];
        assert!(!widen(&mut eps, "a.example", &[ip("203.0.113.5")], |_, _, a| a != ip("203.0.113.5")));
        assert_eq!(eps[0], host("a.example", &["192.0.2.1"]));
    }

    #[test]
    fn a_name_allows_a_bounded_number_of_addresses() {
        let mut eps = vec![host("a.example", &[])];
        let many: Vec<IpAddr> =
            (0..200u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i))).collect();
        assert!(widen(&mut eps, "a.example", &many, |_, _, _| true));
        let Endpoint::Host { addrs, .. } = &eps[0] else { unreachable!() };
        assert_eq!(addrs.len(), MAX_ADDRS);
    }

    #[test]
    fn a_name_is_not_rebound_to_this_host_the_network_or_the_link() {
        let public = [ip("93.184.216.34")];
        assert!(takes(&public, ip("93.184.216.35")));
        for inside in
            ["127.0.0.1", "10.0.0.5", "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.0", "::1"]
        {
            assert!(!takes(&public, ip(inside)), "{inside}");
        }
        assert!(!takes(&public, ip("fe80::1")) && !takes(&public, ip("fd00::1")));
        // A name that was local stays local (localhost, an internal service).
        assert!(takes(&[ip("127.0.0.1")], ip("127.0.0.2")));
        assert!(takes(&[ip("10.1.2.3")], ip("10.9.9.9")));
        assert!(!takes(&[ip("10.1.2.3")], ip("169.254.169.254")));
        // Nothing before: public addresses only.
        assert!(takes(&[], ip("2001:db8::1")) && !takes(&[], ip("127.0.0.1")));
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
