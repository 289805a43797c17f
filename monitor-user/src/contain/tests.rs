use super::*;
use std::time::Duration;

#[test]
fn cookies_under_follow_delegation() {
    let mut c = Containment::default();
    c.register("top".into(), 1, None, false);
    c.register_sub("sub".into(), 2, "top".into(), false);
    c.register_sub("subsub".into(), 3, "sub".into(), false);
    c.register("other".into(), 4, None, false);
    let mut all = c.cookies_under("top");
    all.sort();
    assert_eq!(all, [1, 2, 3]);
    assert_eq!(c.cookies_under("sub").len(), 2);
    assert_eq!(c.cookies_under("other"), [4]);
    assert!(c.cookies_under("none").is_empty());
    assert!(!c.was_killed("subsub"));
}

/// A directory standing in for a cgroup: its freeze file says what was asked.
pub(crate) fn fake_cgroup(d: &std::path::Path, name: &str, frozen: bool) -> TaskCgroup {
    let path = d.join(name);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("cgroup.freeze"), if frozen { "1\n" } else { "0\n" }).unwrap();
    std::fs::write(path.join("cgroup.events"), format!("populated 1\nfrozen {}\n", frozen as u8)).unwrap();
    TaskCgroup { path, id: 1, origin: None, grave: None }
}

fn asked(c: &Containment, id: &str) -> String {
    std::fs::read_to_string(c.cgroup(id).unwrap().path.join("cgroup.freeze")).unwrap().trim().to_string()
}

fn all(c: &Containment) -> Vec<Arc<str>> {
    c.tasks.keys().cloned().collect()
}

/// A pause is marked on its cgroup and unmarked when thawed or claimed; a resumed
/// task whose cgroup is marked and frozen (a killed daemon's pause) stays a pause
/// until the first tick, which thaws it with a record by `restart`, unless a rule,
/// an operator or an expiry claimed it first; an unmarked freeze is not touched.
/// Marks need root (trusted xattrs): without it pauses go on unmarked.
#[test]
fn a_pause_left_behind_is_thawed_at_the_first_tick_unless_claimed() {
    let root = nix::unistd::geteuid().is_root();
    let d = tempfile::tempdir().unwrap();
    let marked = |c: &Containment, id: &str| c.cgroup(id).unwrap().marked_paused();
    let mut c = Containment::default();
    c.register("run".into(), 1, Some(fake_cgroup(d.path(), "run", false)), true);
    assert_eq!(c.pause(&["run".into()]).len(), 1);
    assert_eq!(marked(&c, "run"), root);
    assert_eq!(c.unmarkable.is_some(), !root);
    c.resume();
    assert!(!marked(&c, "run"));
    // What a killed daemon leaves: marked and frozen; and an operator's freeze.
    let left = |name: &str, mark: bool| {
        let cg = fake_cgroup(d.path(), name, true);
        if mark && root {
            cg.mark_paused(true).unwrap();
        }
        cg
    };
    c.register("left".into(), 2, Some(left("left", true)), true);
    c.register("claimed".into(), 3, Some(left("claimed", true)), true);
    c.register("operator's".into(), 4, Some(left("operator's", false)), true);
    for id in ["left", "claimed", "operator's"] {
        c.adopt_left_pause(id);
    }
    assert_eq!((c.is_paused("left"), c.is_paused("operator's")), (root, false));
    // Backpressure's own thaw leaves it to the tick; a claim makes it a freeze.
    c.resume();
    assert_eq!(asked(&c, "left"), "1");
    assert_eq!(c.claim("claimed"), root);
    assert!(!marked(&c, "claimed"));
    let evs = c.thaw_left_pauses("h".into(), Timestamp(1));
    let thawed: Vec<_> =
        evs.iter().map(|e| (e.task.as_deref(), e.detail["by"].as_str(), e.error.is_none())).collect();
    if root {
        assert_eq!(thawed, [(Some("left"), Some("restart"), true)]);
        assert_eq!(asked(&c, "left"), "0");
        assert!(!marked(&c, "left"));
    } else {
        assert!(thawed.is_empty());
    }
    assert_eq!((asked(&c, "claimed"), asked(&c, "operator's")), ("1".into(), "1".into()));
    assert!(c.thaw_left_pauses("h".into(), Timestamp(2)).is_empty(), "thawed twice");
    // A mark on a cgroup no longer frozen (killed between the two) is only cleared.
    if root {
        let cg = fake_cgroup(d.path(), "between", false);
        cg.mark_paused(true).unwrap();
        c.register("between".into(), 5, Some(cg), true);
        c.adopt_left_pause("between");
        assert!(!c.is_paused("between") && !marked(&c, "between"));
    }
}

#[test]
fn a_pause_thaws_only_what_it_froze() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Containment::default();
    c.register("run".into(), 1, Some(fake_cgroup(d.path(), "run", false)), true);
    c.register("held".into(), 2, Some(fake_cgroup(d.path(), "held", true)), true);
    c.register("sub".into(), 3, None, true);
    // Only the running task with a cgroup is paused; a frozen one is not taken.
    assert_eq!(c.pause(&all(&c)), vec![Arc::<str>::from("run")]);
    assert_eq!((asked(&c, "run"), asked(&c, "held")), ("1".into(), "1".into()));
    assert!(c.pause(&all(&c)).is_empty(), "paused twice");
    c.resume();
    assert_eq!((asked(&c, "run"), asked(&c, "held")), ("0".into(), "1".into()));
    // Frozen for good (a rule, an operator, an expiry) while paused: it stays.
    assert_eq!(c.pause(&all(&c)).len(), 1);
    assert!(c.claim("run"));
    c.resume();
    assert_eq!(asked(&c, "run"), "1");
    // Forgotten while paused: thawed (what is left in its cgroup runs on).
    std::fs::write(c.cgroup("run").unwrap().path.join("cgroup.freeze"), "0").unwrap();
    assert_eq!(c.pause(&all(&c)).len(), 1);
    let path = c.cgroup("run").unwrap().path.join("cgroup.freeze");
    c.unregister("run");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "0");
    assert!(c.paused.is_empty());
    // Dropped while paused (agentmon ending any way): thawed.
    c.register("last".into(), 4, Some(fake_cgroup(d.path(), "last", false)), true);
    assert_eq!(c.pause(&["last".into()]).len(), 1);
    drop(c);
    assert_eq!(std::fs::read_to_string(d.path().join("last/cgroup.freeze")).unwrap(), "0");
}

#[test]
fn a_pause_stops_the_tasks_that_make_the_storm() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Containment::default();
    c.register("noisy".into(), 1, Some(fake_cgroup(d.path(), "noisy", false)), false);
    c.register("quiet".into(), 3, Some(fake_cgroup(d.path(), "quiet", false)), false);
    c.register("gated".into(), 5, Some(fake_cgroup(d.path(), "gated", false)), false);
    // A storm split over eleven sub-tasks is its top-level task's.
    let mut samples: HashMap<Arc<str>, u32> = HashMap::new();
    for i in 0..11 {
        let sub: Arc<str> = format!("noisy-{i}").into();
        c.register_sub(sub.clone(), 10 + i, "noisy".into(), false);
        samples.insert(sub, 9);
    }
    samples.insert("quiet".into(), 2);
    samples.insert("gated".into(), 50);
    // Gated's share is large, but it has a call held for approval.
    let m = c.makers(&samples, 150, &["gated".into()]);
    assert_eq!(m, vec![Arc::<str>::from("noisy")]);
    assert_eq!(c.pause(&m), vec![Arc::<str>::from("noisy")]);
    assert_eq!((asked(&c, "quiet"), asked(&c, "gated")), ("0".into(), "0".into()));
    c.resume();
    // Too few samples to tell shares: every task sampled, and only those.
    let few: HashMap<Arc<str>, u32> = [("quiet".into(), 1)].into();
    assert_eq!(c.makers(&few, 3, &[]), vec![Arc::<str>::from("quiet")]);
    // A task that is gone names nothing.
    let gone: HashMap<Arc<str>, u32> = [("gone".into(), 40)].into();
    assert!(c.makers(&gone, 40, &[]).is_empty());
}

#[test]
fn a_freeze_not_reported_in_time_is_given_up_once() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Containment::default();
    let events = |c: &Containment, id: &str| c.cgroup(id).unwrap().path.join("cgroup.events");
    for (id, cookie) in [("slow", 1), ("done", 2), ("thawed", 3), ("young", 4)] {
        c.register(id.into(), cookie, Some(fake_cgroup(d.path(), id, true)), true);
        std::fs::write(events(&c, id), "populated 1\nfrozen 0\n").unwrap();
        let by = if id == "young" { operator() } else { By::Expiry };
        c.tasks.get_mut(id).unwrap().freezing = Some(freeze::Freezing::asked(None, &by));
    }
    // Reported done meanwhile; thawed by someone meanwhile.
    std::fs::write(events(&c, "done"), "populated 1\nfrozen 1\n").unwrap();
    std::fs::write(c.cgroup("thawed").unwrap().path.join("cgroup.freeze"), "0\n").unwrap();
    // Within its grace: waited for still.
    assert!(c.late_freezes(Duration::from_secs(3600)).is_empty());
    assert!(c.tasks["slow"].freezing.is_some() && c.tasks["young"].freezing.is_some());
    assert!(c.tasks["done"].freezing.is_none() && c.tasks["thawed"].freezing.is_none());
    let mut late = c.late_freezes(Duration::ZERO);
    late.sort_by(|a, b| a.id.cmp(&b.id));
    let got: Vec<(&str, &str, bool)> = late.iter().map(|l| (&*l.id, l.asked.by, l.asked.contain)).collect();
    assert_eq!(got, [("slow", "expiry", true), ("young", "operator", false)]);
    // Given up once: not again.
    assert!(c.late_freezes(Duration::ZERO).is_empty());
    // A killed task's freeze is not waited for.
    c.tasks.get_mut("slow").unwrap().freezing = Some(freeze::Freezing::asked(None, &By::Expiry));
    c.tasks.get_mut("slow").unwrap().killed = true;
    assert!(c.late_freezes(Duration::ZERO).is_empty());
    assert!(c.tasks["slow"].freezing.is_none());
    // Unreadable: asked about again, not forgotten (nor killed).
    c.tasks.get_mut("young").unwrap().freezing = Some(freeze::Freezing::asked(None, &By::Expiry));
    std::fs::remove_file(events(&c, "young")).unwrap();
    assert!(c.late_freezes(Duration::ZERO).is_empty());
    assert!(c.tasks["young"].freezing.is_some());
}

fn operator() -> By<'static> {
    By::Operator { pid: 1, uid: 0, via: None }
}

#[test]
fn a_freeze_asked_again_keeps_its_grace_and_its_containment() {
    let first = freeze::Freezing::asked(None, &operator());
    assert_eq!((first.by, first.contain), ("operator", false));
    std::thread::sleep(Duration::from_millis(5));
    // A rule (here an expiry) makes an operator's freeze a containment: named, and
    // killed when late; the grace still runs from the operator's asking.
    let again = freeze::Freezing::asked(Some(&first), &By::Expiry);
    assert_eq!((again.by, again.contain, again.since), ("expiry", true, first.since));
    // An operator asking again takes nothing away.
    let third = freeze::Freezing::asked(Some(&again), &operator());
    assert_eq!((third.by, third.contain, third.since), ("expiry", true, first.since));
}
