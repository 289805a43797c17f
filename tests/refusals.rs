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
