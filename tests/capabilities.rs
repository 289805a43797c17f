//! What a root agent keeps of the capabilities agentmon drops (enforce/caps.rs) when
//! agentmon itself was started with unusual sets: the drop must not rely on root's
//! usual state.

use std::os::unix::process::CommandExt;

use agentmon::enforce::caps;

use crate::{
    R,
    support::{self, SCENARIO_ENV, eq, workdir},
};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SETPCAP: u32 = 8;

/// Changes the calling process's sets with `f` (capget, then capset).
fn capset(f: impl Fn(&mut [caps::Data; 2])) -> std::io::Result<()> {
    let mut d = caps::get().ok_or_else(std::io::Error::last_os_error)?;
    f(&mut d);
    if caps::set(&d) { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// agentmon started with CAP_NET_ADMIN in its inheritable set (which root keeps
/// across exec, and which an exec of a root program turns back into a permitted
/// capability whatever the bounding set says), then with no CAP_SETPCAP (it cannot
/// shrink the bounding set at all): either way the agent holds neither CAP_NET_ADMIN
/// nor CAP_SYS_ADMIN after its exec.
pub fn harness_capabilities_do_not_reach_the_agent() -> R {
    let d = workdir("caps");
    let (t, me) = support::enforced_self_task(&d, "caps", "")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let actions = [
        format!("has_cap={CAP_NET_ADMIN}"),
        format!("has_cap={CAP_SYS_ADMIN}"),
        format!("holds_cap={CAP_NET_ADMIN}"),
        format!("holds_cap={CAP_SYS_ADMIN}"),
    ];
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(actions);
    let events = d.join("events.jsonl");
    let flags = ["--task", t.to_str().unwrap()];
    let env = [(SCENARIO_ENV, "attempts")];

    // 1. CAP_NET_ADMIN inheritable.
    let mut c = support::exec_command(&events, &flags, &cmd, &env, &d);
    unsafe {
        c.pre_exec(|| capset(|d| d[0].inheritable |= 1 << CAP_NET_ADMIN));
    }
    let run = support::run_command(c, &events)?;
    eq("exit (inheritable)", run.code, 0)?;
    eq(
        "capabilities after exec (inheritable)",
        results(&d)?,
        ["has_cap 0", "has_cap 0", "holds_cap 0", "holds_cap 0"].map(String::from).to_vec(),
    )?;

    // 2. No CAP_SETPCAP: the bounding set stays as it is, so the agent's current
    // sets must be emptied of them (no_new_privs keeps the exec from adding back).
    let _ = std::fs::remove_file(&events);
    let mut c = support::exec_command(&events, &flags, &cmd, &env, &d);
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SETPCAP as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            capset(|d| {
                for s in [&mut d[0].effective, &mut d[0].permitted, &mut d[0].inheritable] {
                    *s &= !(1 << CAP_SETPCAP);
                }
            })
        });
    }
    let run = support::run_command(c, &events)?;
    eq("exit (no CAP_SETPCAP)", run.code, 0)?;
    eq(
        "capabilities after exec (no CAP_SETPCAP: still bounded, not held)",
        results(&d)?,
        ["has_cap 1", "has_cap 1", "holds_cap 0", "holds_cap 0"].map(String::from).to_vec(),
    )?;
    Ok(())
}

/// The scenario's results, one line per action.
fn results(d: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    Ok(text.lines().map(String::from).collect())
}
