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
    const N: u64 = 300;
    let (run, res) = run_attempts(&d, &task, &[format!("sigio_flood={N}")])?;
    eq("every request refused (errno)", res.get("sigio_flood").copied(), Some(libc::EPERM))?;
    let records: Vec<_> = run
        .of(Kind::Tamper)
        .into_iter()
        .filter(|e| e.detail.get("attempt").and_then(|v| v.as_str()) == Some("signal routing"))
        .collect();
    let count =
        |k: &str| records.iter().filter_map(|e| e.detail.get(k).and_then(|v| v.as_u64())).sum::<u64>();
    // One by one (no count of their own), plus what the others say they stand for.
    let single = records.iter().filter(|e| !e.detail.contains_key("unrecorded")).count() as u64;
    let accounted = single + count("unrecorded_before") + count("unrecorded");
    eq("refusals accounted for (recorded + counted)", accounted, N)?;
    ensure(records.len() < 40, || format!("{} records for {N} refusals: not limited", records.len()))?;
    ensure(
        records
            .iter()
            .all(|e| e.verdict.as_deref() == Some("denied") && e.task.as_deref() == Some("refusal-flood")),
        || format!("a record not denied or not the task's: {records:?}"),
    )?;
    Ok(())
}
