//! What-if without a task's manifest: the task's scope is not judged again, its
//! recorded judgement is kept. So that the rules see what the live judge gave them —
//! the scope's finding (`outside_scope`) and the task's root (`parent_is_root`) —
//! each recorded task gets two stand-in tasks: one that allows everything, for the
//! events its scope allowed, and one that allows nothing, for those it did not.
//! Both carry the real id (rate windows are per task id) under different keys.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use crate::{
    event::{Alert, Event, Timestamp},
    judge::{Bound, Judge},
    task::Task,
};

use super::whatif::Judged;

const ALLOW_ALL: &str = r#"
id: replay-allow-all
mode: execute
scope:
  read: ["/**"]
  write: ["/**"]
  delete: ["/**"]
  exec: ["/**"]
  connect: ["0.0.0.0/0:*", "[::/0]:*", "unix:/*", "unix:@*"]
  listen: ["0.0.0.0/0:*", "[::/0]:*", "unix:/*", "unix:@*"]
"#;

const DENY_ALL: &str = "id: replay-deny-all\nmode: execute\n";

fn task(text: &str, id: &str) -> Task {
    let mut t = crate::task::parse(text, Path::new("(replay stand-in)"), Timestamp(0))
        .expect("the stand-in manifests are valid");
    t.id = id.to_string();
    t
}

/// The scope's part of each recorded verdict, where an alert spelled it out (an
/// alert lists every reason; the event only the strongest).
pub fn recorded_scopes(alerts: &[Alert]) -> HashMap<uuid::Uuid, Judged> {
    let mut scope = HashMap::new();
    for a in alerts {
        if let Some(r) = a.reasons.iter().find(|r| r.rule.is_none()) {
            let reason = match &r.clause {
                Some(c) => format!("{c}: {}", r.message),
                None => r.message.clone(),
            };
            let j = Judged {
                verdict: r.verdict.as_str().to_string(),
                action: r.action.as_str().to_string(),
                rule: None,
                reason: Some(reason),
            };
            scope.insert(a.event.id, j);
        }
    }
    scope
}

/// The stand-ins bound so far, by key.
#[derive(Default)]
pub struct StandIns {
    bound: HashSet<Arc<str>>,
}

impl StandIns {
    /// The key to judge `e` (of task `real`) under, binding the stand-in on first use.
    /// `outside`: the task's scope did not allow the event.
    pub fn key(&mut self, judge: &mut Judge, events: &[Event], real: &Arc<str>, outside: bool) -> Arc<str> {
        let key: Arc<str> = format!("{real}\u{0}{}", if outside { "deny" } else { "allow" }).into();
        if self.bound.insert(key.clone()) {
            let t = task(if outside { DENY_ALL } else { ALLOW_ALL }, real);
            let mut b = Bound::new(Arc::new(t), super::whatif::root_pid(events, real));
            b.id = key.clone();
            judge.bind(b);
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Dst, Kind},
        policy::{Engine, Windows},
    };

    #[test]
    fn stand_ins_allow_everything_or_nothing() {
        let (allow, deny) = (task(ALLOW_ALL, "t"), task(DENY_ALL, "t"));
        let engine = Engine::default();
        let mut cases = Vec::new();
        for (kind, path, dst) in [
            (Kind::FileWrite, Some("/etc/hosts"), None),
            (Kind::FileDelete, Some("/srv/x"), None),
            (Kind::SensitiveRead, Some("/root/.ssh/id_rsa"), None),
            (Kind::Exec, Some("/usr/bin/curl"), None),
            (Kind::Connect, None, Some(Dst::Ip { ip: "10.1.2.3".into(), port: 443 })),
            (Kind::Connect, None, Some(Dst::Ip { ip: "2001:db8::1".into(), port: 80 })),
            (Kind::Connect, None, Some(Dst::Unix { unix: "/run/x.sock".into() })),
            (Kind::Connect, None, Some(Dst::Unix { unix: "@abstract".into() })),
            (Kind::Listen, None, Some(Dst::Ip { ip: "0.0.0.0".into(), port: 8080 })),
        ] {
            let mut e = Event::new(kind, Timestamp(1), "h".into());
            e.path = path.map(str::to_string);
            e.exe = (kind == Kind::Exec).then(|| "/usr/bin/curl".into());
            e.dst = dst;
            e.task = Some("t".into());
            cases.push(e);
        }
        for e in &cases {
            let judge = |t: &Task| {
                let cx = crate::policy::Ctx { task: Some(t), ..Default::default() };
                engine.judge(e, &cx, &mut Windows::default()).verdict.as_str()
            };
            assert_eq!(judge(&allow), "in_scope", "{e:?}");
            assert_eq!(judge(&deny), "out_of_scope", "{e:?}");
        }
    }
}
