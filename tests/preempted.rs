//! Enforcement on a kernel that preempts kernel code: a check preempted half done
//! must come back to its own state.

use std::path::Path;

use agentmon::event::Kind;

use crate::{
    R,
    support::{self, SCENARIO_ENV, ensure, workdir},
};

/// A directory `depth` levels below `base`, made: long climbs, which a preemption
/// lands in often.
fn deep(base: &Path, depth: usize) -> Result<std::path::PathBuf, String> {
    let mut p = base.to_path_buf();
    for i in 0..depth {
        p.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
    Ok(p)
}

/// Two threads of an enforced agent pinned to one CPU, one writing inside its scope
/// and one outside it, and on the BPF LSM tier one reading inside its read scope and
/// one reading a file of the sensitive set the task may not read: where the kernel
/// preempts kernel code, each thread's hooks are preempted mid-check while the
/// other's run. Kept per CPU (as first built), a resumed check went on from the
/// other thread's state: an out-of-scope write judged by the in-scope path, a
/// sensitive read by the other file's name. Every refusal must hold, and every
/// allowed open go through.
pub fn preempted_checks_stay_their_own() -> R {
    let d = workdir("preempted");
    let inside = deep(&d.join("repo"), 24)?.join("in.txt");
    let outside = deep(&d.join("out"), 24)?.join("out.txt");
    let read = deep(&d.join("allowed"), 24)?.join("notes.txt");
    std::fs::write(&read, b"notes").map_err(|e| e.to_string())?;
    let sensitive = deep(&d.join("home"), 24)?.join(".env");
    std::fs::write(&sensitive, b"TOKEN=secret").map_err(|e| e.to_string())?;
    let lsm = support::bpf_lsm();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let task = support::read_write_task(&d, "preempted", lsm)?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&task, &d)?);
    }
    let secs = if support::slowdown() > 1 { 4 } else { 3 };
    let mut cmd = vec![
        me.display().to_string(),
        d.display().to_string(),
        secs.to_string(),
        inside.display().to_string(),
        outside.display().to_string(),
    ];
    // The sensitive set is matched in the kernel only on the BPF LSM tier (elsewhere a
    // task that denies its reads is refused).
    if lsm {
        cmd.push(read.display().to_string());
        cmd.push(sensitive.display().to_string());
    }
    let run = support::run_agentmon_with(
        &["--task", task.to_str().unwrap()],
        &cmd,
        &[(SCENARIO_ENV, "race_checks")],
        &d,
    )?;
    ensure(run.code == 0, || format!("agent exited {}: {}\n{}", run.code, run.stderr, run.summary()))?;
    let start = run.of(Kind::TaskStart).into_iter().next().ok_or_else(|| run.summary())?;
    support::eq("enforcing tier", start.detail.get("tier").and_then(|v| v.as_str()), Some(support::tier()))?;
    let text = std::fs::read_to_string(d.join("repo/race.txt")).map_err(|e| format!("no results: {e}"))?;
    let (mut kinds, mut wrong) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind, tries, what, odd] = f[..] else { return Err(format!("race.txt: {line:?}").into()) };
        let (tries, odd): (u64, u64) =
            (tries.parse().map_err(|_| line.to_string())?, odd.parse().map_err(|_| line.to_string())?);
        eprintln!("{kind}: {tries} opens, {odd} {what}");
        if odd != 0 {
            wrong.push(format!(
                "{kind}: {odd} of {tries} opens {what} (a check preempted half done answered wrongly)"
            ));
        }
        // A run too short to be preempted in proves nothing.
        if tries < 200 {
            wrong.push(format!("{kind}: only {tries} opens in {secs} s"));
        }
        kinds.push(kind.to_string());
    }
    ensure(wrong.is_empty(), || wrong.join("; "))?;
    let want: &[&str] = if lsm {
        &["write_in", "write_out", "read_in", "read_sensitive"]
    } else {
        &["write_in", "write_out"]
    };
    ensure(kinds == want, || format!("race.txt names {kinds:?}, not {want:?}"))?;
    // The refused writes are records too, each denied.
    let out = outside.to_str().unwrap();
    let w: Vec<_> = run.of(Kind::FileCreate).into_iter().filter(|e| e.path.as_deref() == Some(out)).collect();
    ensure(!w.is_empty(), || format!("no record of the out-of-scope writes:\n{}", run.summary()))?;
    for e in w {
        support::eq(
            "out-of-scope write",
            (e.verdict.as_deref(), e.error.as_deref()),
            (Some("denied"), Some("EACCES")),
        )?;
    }
    Ok(())
}
