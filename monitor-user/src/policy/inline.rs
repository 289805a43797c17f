//! Whether a rule whose action is `deny` can be carried out before the effect for
//! an enforced task, on the layers of the syscall-tracepoint tier (Landlock,
//! seccomp, the cgroup network guard). Rules are judged at syscall exit, after
//! the effect: a `deny` the layers do not already give would be a record that
//! says "deny" over something that happened. So each deny rule must be one of:
//! - about calls the layers refuse to every enforced task (ptrace, bpf, io_uring,
//!   unix and raw sockets, fileless exec, the tamper calls);
//! - `outside_scope: true` (the layers refuse what is outside the scope);
//! - about operations the task's scope does not allow at all (the layers refuse
//!   them), judged on the patterns, conservatively;
//! - about connects to addresses (`dst`, no other condition): then those
//!   addresses are taken out of the task's network allowlist ([`Inline::net`]).
//!
//! Anything else makes an enforced task unenforceable, with the reason.

use ipnet::IpNet;

use super::{Action, Rule};
use crate::{
    event::Kind,
    task::{
        Mode, Task,
        scope::{PathSet, literal_prefix},
    },
};

/// What the layers must add for the task's deny rules to hold before the effect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inline {
    /// Addresses to refuse in the network guard, whatever the scope allows.
    pub net: Vec<IpNet>,
}

/// Kinds the layers refuse to every enforced task (extended attributes included:
/// none may be changed).
fn always_refused(k: Kind) -> bool {
    matches!(k, Kind::Ptrace | Kind::Bpf | Kind::IoUring | Kind::Tamper | Kind::FileXattr)
}

/// Kinds whose out-of-scope calls the layers refuse before the effect (Landlock,
/// the network guard, the gate's scope check for mode and owner changes).
fn refused_outside_scope(k: Kind) -> bool {
    always_refused(k)
        || matches!(
            k,
            Kind::FileWrite
                | Kind::FileCreate
                | Kind::FileTruncate
                | Kind::FileLink
                | Kind::DirCreate
                | Kind::FileRename
                | Kind::FileDelete
                | Kind::FileChmod
                | Kind::FileChown
                | Kind::Exec
                | Kind::MemfdExec
                | Kind::Connect
                | Kind::Send
        )
}

/// Could a path match both `a` (a rule pattern, absolute or `**/...`) and a scope
/// pattern `b`? Says yes unless the literal prefixes prove them apart.
fn may_overlap(a: &str, b: &str) -> bool {
    if a.starts_with("**") || b.starts_with("**") {
        return true;
    }
    let (pa, pb) = (literal_prefix(a), literal_prefix(b));
    let (pa, pb) = (std::path::Path::new(pa), std::path::Path::new(pb));
    pa.starts_with(pb) || pb.starts_with(pa)
}

fn paths_overlap(rule: &[String], scope: &PathSet) -> bool {
    rule.is_empty() && !scope.is_empty()
        || rule.iter().any(|r| scope.patterns.iter().any(|s| may_overlap(r, s)))
}

/// Checks every deny rule of `rules` against enforced `task`: what the layers
/// must add, or why one cannot be enforced before the effect.
pub fn deny_rules<'a>(rules: impl Iterator<Item = &'a Rule>, task: &Task) -> Result<Inline, String> {
    let mut out = Inline::default();
    for r in rules.filter(|r| r.action == Action::Deny) {
        if let Some(nets) = check(r, task)? {
            out.net.extend(nets);
        }
    }
    Ok(out)
}

/// Nets to take out of the allowlist (Some) or nothing needed (None); Err: why not.
fn check(r: &Rule, task: &Task) -> Result<Option<Vec<IpNet>>, String> {
    let m = &r.matcher;
    let no = |why: String| {
        Err(format!(
            "rule {} ({}:{}) has action deny, but {why}: no active layer can refuse that before it happens \
             (make the rule freeze, kill or require_approval, or narrow the task's scope)",
            r.id,
            r.file.display(),
            r.line
        ))
    };
    let kinds: Vec<Kind> = if m.kinds.is_empty() { Kind::ALL.to_vec() } else { m.kinds.clone() };
    let mut nets = Vec::new();
    for k in kinds.into_iter().filter(|k| !always_refused(*k) && !k.is_own_record()) {
        if m.outside_scope == Some(true) {
            // Only out-of-scope calls match: held where the layers refuse those.
            if refused_outside_scope(k) {
                continue;
            }
            return no(format!("{} outside the scope is not refused by any layer of this host", k.as_str()));
        }
        match k {
            Kind::Connect | Kind::Send => {
                if m.unix.is_some() {
                    continue; // unix sockets are refused to enforced tasks
                }
                let reachable = !task.connect.is_empty();
                if !reachable {
                    continue;
                }
                let only_dst = !m.dst.is_empty()
                    && m.not_dst.is_empty()
                    && m.ports.is_empty()
                    && m.exe.is_none()
                    && m.comm.is_empty()
                    && m.argv.is_none()
                    && m.parent_exe.is_none()
                    && m.parent_is_root.is_none()
                    && m.rate.is_none();
                if !only_dst {
                    return no(
                        "it is about connects the task's scope allows, and not by address alone".into()
                    );
                }
                nets.extend(m.dst.iter().copied());
            }
            Kind::FileWrite
            | Kind::FileCreate
            | Kind::FileTruncate
            | Kind::FileLink
            | Kind::DirCreate
            | Kind::FileRename
            | Kind::FileChmod
            | Kind::FileChown => {
                let allowed = match task.mode {
                    Mode::Read => false,
                    Mode::Propose => true,
                    Mode::Execute => paths_overlap(&m.path_patterns, &task.write),
                };
                if allowed {
                    return no(format!("{} may match a write the task's scope allows", k.as_str()));
                }
            }
            Kind::FileDelete => {
                if task.mode == Mode::Execute && paths_overlap(&m.path_patterns, &task.delete) {
                    return no("file_delete may match a delete the task's scope allows".into());
                }
            }
            // A deleted file run through its descriptor is memfd_exec too: as exec.
            Kind::Exec | Kind::MemfdExec => {
                let exe: Vec<String> = m.exe_patterns.iter().chain(&m.path_patterns).cloned().collect();
                if paths_overlap(&exe, &task.exec) || task.exec.is_empty() && exe.is_empty() {
                    return no("exec may match an executable the task's scope allows".into());
                }
            }
            // No layer of this tier refuses these: metadata changes, sensitive reads,
            // id changes, binds and listens, process lifecycle.
            other => return no(format!("{} is not refused by any layer of this host", other.as_str())),
        }
    }
    Ok((!nets.is_empty()).then_some(nets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Timestamp, policy::RuleSet};

    fn task(scope: &str) -> Task {
        crate::task::parse(
            &format!("id: t\nmode: execute\nenforcement: enforce\nscope:\n{scope}"),
            std::path::Path::new("t.yaml"),
            Timestamp(0),
        )
        .unwrap()
    }

    fn rules(body: &str) -> RuleSet {
        let text = format!(
            "rules:\n  - id: r\n    description: d\n    severity: high\n    action: deny\n{body}    examples:\n      \
             match: [{{kind: ptrace}}]\n      no_match: [{{kind: exec, exe: /x}}]\n"
        );
        RuleSet::from_texts(std::iter::once((std::path::Path::new("r.yaml"), text.as_str())), Vec::new())
            .unwrap()
    }

    #[test]
    fn shipped_deny_rules_hold_for_a_typical_task() {
        let set = crate::policy::shipped::rules().unwrap();
        let t =
            task("  write: [\"/srv/repo/**\"]\n  exec: [\"/usr/bin/**\"]\n  connect: [\"0.0.0.0/0:443\"]\n");
        let inline = deny_rules(set.rules.iter(), &t).unwrap();
        // The metadata endpoint is taken out of an allowlist that would reach it.
        assert!(inline.net.iter().any(|n| n.to_string() == "169.254.169.254/32"), "{inline:?}");
        let closed = task("  write: [\"/srv/repo/**\"]\n");
        assert_eq!(deny_rules(set.rules.iter(), &closed).unwrap().net, Vec::<IpNet>::new());
    }

    #[test]
    fn deny_rules_the_layers_cannot_carry_out_are_named() {
        let on_writes = rules("    match:\n      kinds: [file_create]\n      paths: [\"**/.ssh/**\"]\n");
        let t = task("  write: [\"/home/a/**\"]\n");
        let e = deny_rules(on_writes.rules.iter(), &t).unwrap_err();
        assert!(e.contains("rule r") && e.contains("file_create"), "{e}");
        // Writes the scope does not allow at all: Landlock refuses them.
        let elsewhere = rules("    match:\n      kinds: [file_create]\n      paths: [\"/etc/**\"]\n");
        assert!(deny_rules(elsewhere.rules.iter(), &t).is_ok());
        // Mode changes are held and scope-checked: outside the scope they are refused.
        let chmod = rules("    match:\n      kinds: [file_chmod]\n      paths: [\"/etc/**\"]\n");
        assert!(deny_rules(chmod.rules.iter(), &t).is_ok());
        let chmod_in = rules("    match:\n      kinds: [file_chmod]\n      paths: [\"/home/a/**\"]\n");
        assert!(deny_rules(chmod_in.rules.iter(), &t).unwrap_err().contains("file_chmod"));
        let outside = rules("    match:\n      kinds: [file_chmod]\n      outside_scope: true\n");
        assert!(deny_rules(outside.rules.iter(), &t).is_ok());
        // Reads are never refused, in scope or out.
        let reads = rules("    match:\n      kinds: [sensitive_read]\n      outside_scope: true\n");
        assert!(deny_rules(reads.rules.iter(), &t).unwrap_err().contains("sensitive_read"));
        let by_exe = rules(
            "    match:\n      kinds: [connect]\n      dst: [\"10.0.0.0/8\"]\n      exe: [\"/usr/bin/curl\"]\n",
        );
        let net = task("  connect: [\"10.0.0.0/8:443\"]\n");
        assert!(deny_rules(by_exe.rules.iter(), &net).unwrap_err().contains("by address alone"));
    }
}
