//! A flood of refused requests: each costs the agent one syscall and was one
//! record (and alert) for agentmon, so an agent could fill the disk or the stream
//! with them, or bury what matters. Past a burst they are counted, and the count is
//! always said: in the next record, every tick, and when the task ends.

use agentmon::event::Kind;

use crate::{
    R,
    enforce::{run_attempts, setup},
    support::{self, ensure, eq},
};

pub fn refusal_floods_are_counted_not_recorded_one_by_one() -> R {
    let (d, task) = setup("refusal-flood", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    // Two floods of two requests: each is accounted for as itself (a flood of one
    // kind is never summarised as another). The second is slow (20 ms apart): it
    // spans agentmon's ticks, each of which may summarise what was held back, and a
    // tick the limit says no to is no refusal.
    let floods = [("sigio_flood", "F_SETOWN", 300u64, ""), ("tiocsti_flood", "TIOCSTI", 100, "/20")];
    let actions: Vec<String> = floods.iter().map(|(a, _, n, pace)| format!("{a}={n}{pace}")).collect();
    let (run, res) = run_attempts(&d, &task, &actions)?;
    for (action, request, n, _) in floods {
        eq(&format!("every {request} refused (errno)"), res.get(action).copied(), Some(libc::EPERM))?;
        let records: Vec<_> = run
            .of(Kind::Tamper)
            .into_iter()
            .filter(|e| e.detail.get("request").and_then(|v| v.as_str()) == Some(request))
            .collect();
        let count =
            |k: &str| records.iter().filter_map(|e| e.detail.get(k).and_then(|v| v.as_u64())).sum::<u64>();
        // One by one (no count of their own), plus what the others say they stand for.
        let single = records.iter().filter(|e| !e.detail.contains_key("unrecorded")).count() as u64;
        let accounted = single + count("unrecorded_before") + count("unrecorded");
        eq(&format!("{request} refusals accounted for (recorded + counted)"), accounted, n)?;
        ensure(records.len() < 20, || {
            format!("{} records for {n} {request} refusals: not limited", records.len())
        })?;
        ensure(
            records.iter().all(|e| {
                e.verdict.as_deref() == Some("denied") && e.task.as_deref() == Some("refusal-flood")
            }),
            || format!("a record not denied or not the task's: {records:?}"),
        )?;
    }
    Ok(())
}

/// The same for calls the kernel refuses (Landlock, the BPF LSM hooks): a loop of
/// out-of-scope writes was a record and an alert each (43,727 in 3 s from one
/// thread). Past a burst per task, kind and syscall they are counted; every refused
/// call is accounted for, and a refusal of another call in the middle of the flood
/// is recorded as itself.
pub fn kernel_refusal_floods_are_counted_not_recorded_one_by_one() -> R {
    let (d, task) = setup("kernel-refusal-flood", true)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    std::fs::write(d.join("other.txt"), b"keep me too").map_err(|e| e.to_string())?;
    let n = 5_000u64;
    let actions = [
        format!("write_out_flood={n}"),
        "delete_out".into(),
        "write_out_at=other.txt".into(),
        format!("write_out_flood_again={n}"),
    ];
    let (run, res) = run_attempts(&d, &task, &actions)?;
    for flood in ["write_out_flood", "write_out_flood_again"] {
        eq(
            &format!("every out-of-scope write refused (errno, {flood})"),
            res.get(flood).copied(),
            Some(libc::EACCES),
        )?;
    }
    eq("the delete refused (errno)", res.get("delete_out").copied(), Some(libc::EACCES))?;
    eq("the write to another file refused (errno)", res.get("write_out_at").copied(), Some(libc::EACCES))?;
    let (victim, other) = (d.join("victim.txt"), d.join("other.txt"));
    let (victim, other) = (victim.to_str().unwrap(), other.to_str().unwrap());
    // The refused writes, of both files: one key (task, kind, syscall), one count.
    let writes: Vec<_> = run
        .events
        .iter()
        .filter(|e| {
            matches!(e.path.as_deref(), Some(p) if p == victim || p == other)
                && e.syscall.as_deref() == Some("openat")
        })
        .collect();
    let count = |k: &str| writes.iter().filter_map(|e| e.detail.get(k).and_then(|v| v.as_u64())).sum::<u64>();
    let single = writes.iter().filter(|e| !e.detail.contains_key("unrecorded")).count() as u64;
    eq(
        "refused writes accounted for (recorded + counted)",
        single + count("unrecorded_before") + count("unrecorded"),
        2 * n + 1,
    )?;
    ensure(count("unrecorded") > 0 || count("unrecorded_before") > 0, || {
        "nothing was counted: not limited".into()
    })?;
    // A burst of 64, then 8 a second, and the summaries: far below one a call.
    ensure(writes.len() < 1_000, || {
        format!("{} records for {} refused writes: not limited", writes.len(), 2 * n + 1)
    })?;
    ensure(
        writes.iter().all(|e| {
            e.verdict.as_deref() == Some("denied")
                && e.error.as_deref() == Some("EACCES")
                && e.task.as_deref() == Some("kernel-refusal-flood")
        }),
        || format!("a write record not denied EACCES or not the task's: {writes:?}"),
    )?;
    // Each summary has its alert, as the records it stands for had theirs, and
    // every one comes before the task's end.
    let summaries: Vec<_> =
        writes.iter().filter(|e| e.detail.contains_key("unrecorded")).map(|e| e.id).collect();
    for id in &summaries {
        ensure(run.alerts.iter().any(|a| a.event.id == *id), || format!("summary {id} has no alert"))?;
    }
    let at = |id: uuid::Uuid| run.events.iter().position(|e| e.id == id);
    let end = run.of(Kind::TaskEnd).first().map(|e| e.id).and_then(at).ok_or("no task_end")?;
    ensure(summaries.iter().all(|id| at(*id) < Some(end)), || {
        format!("a summary written after the task's end:\n{}", run.summary())
    })?;
    // Amid the flood, a refused write to another file is its own record (the
    // same call, key and limit, another target)...
    let others: Vec<_> = writes.iter().filter(|e| e.path.as_deref() == Some(other)).collect();
    ensure(
        others.len() == 1
            && others[0].verdict.as_deref() == Some("denied")
            && !others[0].detail.contains_key("unrecorded"),
        || format!("the refused write to another file amid the flood: {others:?}"),
    )?;
    // ...and so is the refused delete.
    let deletes: Vec<_> = run
        .events
        .iter()
        .filter(|e| e.kind == Kind::FileDelete && e.path.as_deref() == Some(victim))
        .collect();
    ensure(deletes.len() == 1 && deletes[0].verdict.as_deref() == Some("denied"), || {
        format!("the refused delete amid the flood: {deletes:?}")
    })?;
    Ok(())
}
