//! The kernel state of enforced tasks' network guards goes with their tasks: a
//! daemon runs for months, and kept, the guards would fill their maps until every
//! enforced task after was refused.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    R,
    daemon::{attempts_under, daemon_paths, events, scrape, start_daemon, stop},
    support::{self, SCENARIO_ENV, agentmon, ensure, eq, wait, workdir},
};

/// Three enforced tasks with network scopes run and end through a daemon, then a
/// fourth runs on: within the daemon's 10 s sweep, only the fourth's guard and
/// address entries are left in the kernel (metrics); once it is killed, none. Before,
/// every guard and entry stayed for the daemon's life (NET_TASK holds 4096).
pub fn network_guards_go_with_their_tasks() -> R {
    let d = workdir("guards");
    let connect = "  connect: [\"127.0.0.1:5353\", \"[::1]:5353\", \"10.9.0.0/16:443\"]\n";
    let task =
        |i: u32| support::enforced_self_task(&d.join(format!("t{i}")), &format!("guarded-{i}"), connect);
    if !support::can_enforce() {
        let (t, _) = task(0)?;
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let (sock, _) = daemon_paths(&d);
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?.local_addr().unwrap().port();
    let daemon = start_daemon(&d, &format!("metrics: 127.0.0.1:{port}\n"))?;
    let result = (|| -> R {
        let exec = |i: u32, args: &[&str], scenario: &str| -> Result<Command, String> {
            let (t, me) = task(i)?;
            let mut c = Command::new(agentmon());
            c.args(["exec", "--quiet", "--daemon"])
                .arg(&sock)
                .arg("--events")
                .arg(d.join(format!("t{i}.jsonl")))
                .arg("--task")
                .arg(t)
                .arg("--")
                .arg(me)
                // attempts writes DIR/repo/results.txt; stream, DIR/out/f*.
                .arg(if scenario == "stream" {
                    d.join(format!("t{i}/repo"))
                } else {
                    d.join(format!("t{i}"))
                })
                .args(args)
                .env(SCENARIO_ENV, scenario)
                .stdin(Stdio::null());
            Ok(c)
        };
        for i in 0..3 {
            let out = exec(i, &["udp_to=127.0.0.1:5353"], "attempts")?.output().map_err(|e| e.to_string())?;
            eq(&format!("task {i} exit"), out.status.code(), Some(0))?;
        }
        let mut long = exec(3, &["600", "100"], "stream")?.spawn().map_err(|e| e.to_string())?;
        let sample = |name: &str| -> Option<u64> {
            let text = scrape(port).ok()?;
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        let limit = Duration::from_secs(30) * support::slowdown();
        // One guard, and its task's entries: one per destination (the shipped
        // rules deny no address by prefix).
        let one = wait(limit, || {
            sample("agentmon_network_guards") == Some(1)
                && sample("agentmon_network_allow_entries") == Some(3)
        });
        let (g, a) = (sample("agentmon_network_guards"), sample("agentmon_network_allow_entries"));
        ensure(one, || format!("with one enforced task left: {g:?} guards, {a:?} address entries"))?;
        let out = Command::new(agentmon())
            .args(["kill", "guarded-3", "--socket"])
            .arg(&sock)
            .output()
            .map_err(|e| e.to_string())?;
        eq("kill exit", out.status.code(), Some(0))?;
        let _ = long.wait();
        let none = wait(limit, || {
            sample("agentmon_network_guards") == Some(0)
                && sample("agentmon_network_allow_entries") == Some(0)
        });
        let (g, a) = (sample("agentmon_network_guards"), sample("agentmon_network_allow_entries"));
        ensure(none, || format!("with no task left: {g:?} guards, {a:?} address entries"))?;
        Ok(())
    })();
    let stopped = stop(daemon);
    result?;
    stopped?;
    Ok(())
}

/// An enforced task's dropped packet is recorded once, even when the daemon is
/// killed after recording it and a successor takes its pinned maps over (whose
/// counts start where the kernel's are): the successor goes on from what was
/// reported. Before, it reported the same drop again, alert and all.
pub fn drops_are_not_reported_twice_across_a_restart() -> R {
    let d = workdir("drops-restart");
    let dir = d.join("t");
    let (t, me) = support::enforced_self_task(&dir, "redrop", "  connect: [\"127.0.0.1:5353\"]\n")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let (sock, all) = daemon_paths(&d);
    let mut first = start_daemon(&d, "")?;
    let actions = ["recroute_to=127.0.0.1:5353", "sleep_ms=4000"];
    let mut exec = attempts_under(&sock, &t, &me, &dir, &actions).spawn().map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(20) * support::slowdown();
    let recorded = wait(limit, || {
        events(&all).is_ok_and(|evs| !support::tamper_of(&evs, "rerouting packets").is_empty())
    });
    let _ = first.kill();
    let _ = first.wait();
    std::thread::sleep(Duration::from_millis(800));
    let second = start_daemon(&d, "");
    let code = exec.wait().map_err(|e| e.to_string())?.code();
    std::thread::sleep(Duration::from_millis(1200));
    stop(second?)?;
    ensure(recorded, || "the first daemon never recorded the drop".into())?;
    eq("task exit", code, Some(0))?;
    let evs = events(&all)?;
    let records: Vec<(Option<u64>, Option<u64>)> = support::tamper_of(&evs, "rerouting packets")
        .iter()
        .filter(|e| e.task.as_deref() == Some("redrop"))
        .map(|e| {
            (
                e.detail.get("dropped").and_then(|n| n.as_u64()),
                e.detail.get("dropped_total").and_then(|n| n.as_u64()),
            )
        })
        .collect();
    eq("drop records (dropped, total)", records, vec![(Some(1), Some(1))])?;
    Ok(())
}
