//! The tamper records agentmon makes of itself, from the loop's tick: its loop was
//! stopped, its own priority or limits or the kernel's preemption model were
//! changed, or an enforced task's egress check dropped packets. Each comes with its alert.

use std::time::Duration;

use super::engine::Engine;

/// agentmon's loop did not run for `still`: a tamper record (with its alert) says
/// for how long and who traced it, if someone did. What happened meanwhile is read
/// from the ring now; what the ring could not hold is in the next loss record.
pub fn stopped(e: &mut Engine, still: Duration, stall: &super::watchdog::Stall) {
    let me = std::process::id();
    let how = match (stall.tracer, stall.state) {
        (Some(t), _) => format!("traced by pid {t}"),
        (None, Some('T')) => "stopped by a signal".to_string(),
        (None, Some('t')) => "in a tracing stop".to_string(),
        _ => "stopped, or starved of CPU".to_string(),
    };
    let why = format!("agentmon's event loop did not run for {} ms ({how})", still.as_millis());
    let (mut ev, _) = e.p.tamper(me, None, "stopping agentmon", &why, false);
    ev.detail.insert("stopped_ms".into(), serde_json::json!(still.as_millis() as u64));
    if let Some(t) = stall.tracer {
        ev.detail.insert("tracer_pid".into(), serde_json::json!(t));
        if let Some(c) = e.sensors.task_of(t) {
            ev.task = e.p.enr.task_name(c);
            if let Some(b) = ev.task.as_ref().and_then(|id| e.p.judge.task(id)) {
                b.stamp(&mut ev);
            }
        }
    }
    tracing::error!("{why}");
    let alert = e.p.judge.tamper_alert(&ev);
    e.out.send(&ev);
    e.out.alert(&alert);
}

/// agentmon's own priority, policy or limits were changed (and are now put back,
/// unless a line says otherwise): a tamper record, with its alert. Who did it is
/// not known (runner/standing.rs).
pub fn demoted(e: &mut Engine, changed: &[String]) {
    let why = format!(
        "agentmon's own scheduling or limits were changed by another process of its owner: {}",
        changed.join("; ")
    );
    changed_under(e, "starving agentmon", &why, changed);
}

/// A tamper record of agentmon's own (its pid, no task) with `detail.changed`, and
/// its alert.
fn changed_under(e: &mut Engine, what: &str, why: &str, changed: &[String]) {
    let (mut ev, _) = e.p.tamper(std::process::id(), None, what, why, false);
    ev.detail.insert("changed".into(), serde_json::json!(changed));
    tracing::error!("{why}");
    let alert = e.p.judge.tamper_alert(&ev);
    e.out.send(&ev);
    e.out.alert(&alert);
}

/// The kernel's preemption model was switched under agentmon (and is now put back,
/// unless the line says otherwise): a tamper record, with its alert. Who did it is
/// not known; a tracked process's write to debugfs is its own record.
pub fn repreempted(e: &mut Engine, line: &str) {
    let why = format!(
        "{line}: agentmon chose its observation tier for the model it started under; while the kernel \
         preempts kernel code, its fexit programs may be preempted mid-run (an event made with another \
         call's state, or skipped unsaid) and map calls may hide syscalls from its tracepoints unwitnessed"
    );
    changed_under(e, "switching the kernel's preemption", &why, &[line.to_string()]);
}

/// Packets an enforced task's egress check dropped (their header would send them
/// elsewhere than the destination its guard allowed): a refused attempt, recorded
/// with its alert. The kernel does not know which process sent them (a retransmit
/// is sent by none), so the record names the task and no process (pid 0).
pub fn dropped(e: &mut Engine) {
    let drops = e.sensors.new_drops();
    let any = !drops.is_empty();
    for d in drops {
        let why = format!(
            "{} packet(s) with IPv4 options or an IPv6 routing or option header (which can send a \
             packet elsewhere than the destination its guard checked) were dropped at the task's cgroup",
            d.new
        );
        let (mut ev, _) = e.p.tamper(0, d.task, "rerouting packets", &why, true);
        ev.detail.insert("dropped".into(), serde_json::json!(d.new));
        ev.detail.insert("dropped_total".into(), serde_json::json!(d.total));
        ev.detail.insert("cgroup_id".into(), serde_json::json!(d.cgroup));
        tracing::warn!("tamper: task {:?}: {why}", ev.task);
        let alert = e.p.judge.tamper_alert(&ev);
        e.out.send(&ev);
        e.out.alert(&alert);
    }
    // Saved once sent: a successor reports again what it cannot know was said.
    if any && let Some(st) = &e.setup.state {
        e.out.flush();
        st.save_drops(e.sensors.drops_said());
    }
}
