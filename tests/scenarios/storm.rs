//! A storm of file side effects: PROCS processes (forked), each creating and
//! deleting its own file in d/repo as fast as it can, PAIRS times, and with `stop`
//! after that on until d/stop exists. Each writes how many pairs it made to d/made-N.

use std::{fs, path::Path};

use nix::{
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, fork},
};

pub fn storm(d: &Path, args: &[String]) -> Result<(), String> {
    let n = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).ok_or("storm PROCS PAIRS");
    let (procs, pairs) = (n(0)?, n(1)?);
    let until_stop = args.get(2).is_some_and(|a| a == "stop");
    let mut children = Vec::new();
    for i in 0..procs {
        // SAFETY: the child only does file calls and exits.
        match unsafe { fork() }.map_err(|e| e.to_string())? {
            ForkResult::Child => {
                let code = match pairs_of(d, i, pairs, until_stop) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("storm {i}: {e}");
                        1
                    }
                };
                std::process::exit(code);
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    for c in children {
        match waitpid(c, None).map_err(|e| e.to_string())? {
            WaitStatus::Exited(_, 0) => {}
            other => return Err(format!("storm child {c}: {other:?}")),
        }
    }
    Ok(())
}

fn pairs_of(d: &Path, i: u64, pairs: u64, until_stop: bool) -> Result<(), String> {
    let p = d.join(format!("repo/storm-{i}"));
    let stop = d.join("stop");
    let mut made = 0u64;
    while made < pairs || (until_stop && (!made.is_multiple_of(1024) || !stop.exists())) {
        fs::OpenOptions::new().write(true).create_new(true).open(&p).map_err(|e| format!("create: {e}"))?;
        fs::remove_file(&p).map_err(|e| format!("delete: {e}"))?;
        made += 1;
    }
    fs::write(d.join(format!("made-{i}")), made.to_string()).map_err(|e| e.to_string())
}
