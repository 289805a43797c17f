//! Packets an enforced task's sockets send, past the cgroup's egress check.

use std::{os::fd::AsRawFd, os::unix::process::CommandExt, process::Command};

use crate::{
    R,
    support::{self, SCENARIO_ENV, ensure, eq, workdir},
};

/// A network namespace of this test's own (`ip netns`), deleted when dropped.
struct NetNs(String);

impl NetNs {
    fn new(name: &str) -> Result<Self, String> {
        let ns = NetNs(format!("{name}-{}", std::process::id()));
        let _ = ip(&["netns", "del", &ns.0]);
        ip(&["netns", "add", &ns.0])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        ip(&[&["-n", &self.0], args].concat())
    }

    /// A counter of the namespace's /proc/net/snmp6.
    fn snmp6(&self, name: &str) -> Result<u64, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat", "/proc/net/snmp6"])
            .output()
            .map_err(|e| format!("ip netns exec: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in {}'s /proc/net/snmp6", self.0))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    ensure(out.status.success(), || format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

/// BIG TCP (packets over 64 KiB on a device that takes them; IPv6 since 5.19): on
/// kernels before 6.19 the kernel itself puts a hop-by-hop jumbo header before the
/// TCP header, the kind of option header the egress check drops when a caller sets
/// it. An enforced task's allowed connection must not lose those packets: over
/// loopback in a namespace whose `lo` takes 512 KiB packets, 32 MiB arrive whole and
/// every packet handed down leaves. The check dropped them before (TCP then crawled
/// through its timers: 108 s for what takes 4).
pub fn big_tcp_packets_leave_an_enforced_task() -> R {
    let d = workdir("big-tcp");
    let (t, me) = support::enforced_self_task(&d, "bigtcp", "  connect: [\"[::1]:*\", \"127.0.0.1:*\"]\n")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let ns = NetNs::new("agentmon-bigtcp")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    // The largest the kernel takes (GSO_MAX_SIZE): TCP sizes its packets down from
    // it by the pacing rate and the round trip, which a loaded guest makes smaller.
    ns.ip(&["link", "set", "lo", "gso_max_size", "524280", "gro_max_size", "524280"])?;
    let nsfile = std::fs::File::open(format!("/run/netns/{}", ns.0)).map_err(|e| e.to_string())?;
    let fd = nsfile.as_raw_fd();
    let events = d.join("events.jsonl");
    let mut cmd = support::exec_command(
        &events,
        &["--task", t.to_str().unwrap()],
        &[me.display().to_string(), d.display().to_string(), "tcp_bulk=32/[::1]:0".into()],
        &[(SCENARIO_ENV, "attempts")],
        &d,
    );
    // SAFETY: setns is a syscall, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let run = support::run_command(cmd, &events)?;
    drop(nsfile);
    ensure(run.code == 0, || format!("exit {}: {}", run.code, run.stderr))?;
    let res = crate::enforce::attempt_results(&d)?;
    eq(
        "32 MiB sent (0; 10000 + MiB received if short, or the errno)",
        res.get("tcp_bulk").copied(),
        Some(0),
    )?;
    // A packet the check drops is not retransmitted (the send failed locally, and TCP
    // tries again later, slowly): every IPv6 packet handed down (OutRequests) must
    // have left (OutTransmits, after the cgroup's egress programs; 6.3 and later).
    // Before 6.3, on loopback, it must have been received (InReceives), which a full
    // backlog could also prevent.
    let (out, octets) = (ns.snmp6("Ip6OutRequests")?, ns.snmp6("Ip6OutOctets")?);
    let (left, what) = match ns.snmp6("Ip6OutTransmits") {
        Ok(n) => (n, "left"),
        Err(_) => (ns.snmp6("Ip6InReceives")?, "received"),
    };
    eprintln!("IPv6 packets handed down {out} ({octets} bytes), {what} {left}");
    ensure(out > 100 && out == left, || format!("IPv6 packets handed down {out}, {what} {left}"))?;
    // ... and some were BIG TCP packets: 32 MiB in 64 KiB ones (with their ACKs) would
    // average less.
    ensure(octets / out > 65_535, || format!("no BIG TCP packets: {octets} bytes in {out} packets"))?;
    Ok(())
}

/// Each packet the egress check drops is counted once: three sends with an IPv4
/// record-route option (which asks for no capability, so only the check stops it)
/// fail EPERM, and the `rerouting packets` records of the task add up to three.
pub fn dropped_packets_are_counted() -> R {
    let d = workdir("drops");
    let (t, me) = support::enforced_self_task(&d, "drops", "  connect: [\"127.0.0.1:5353\"]\n")?;
    if !support::can_enforce() {
        return Ok(support::enforce_refused_here(&t, &d)?);
    }
    let mut cmd = vec![me.display().to_string(), d.display().to_string()];
    cmd.extend(std::iter::repeat_n("recroute_to=127.0.0.1:5353".to_string(), 3));
    let run = support::run_agentmon_with(
        &["--task", t.to_str().unwrap()],
        &cmd,
        &[(SCENARIO_ENV, "attempts")],
        &d,
    )?;
    ensure(run.code == 0, || format!("exit {}: {}", run.code, run.stderr))?;
    let text = std::fs::read_to_string(d.join("repo/results.txt")).map_err(|e| e.to_string())?;
    eq("sends", text.lines().collect::<Vec<_>>(), vec![&*format!("recroute_to {}", libc::EPERM); 3])?;
    let records = support::tamper_of(&run.events, "rerouting packets");
    ensure(!records.is_empty(), || format!("no record of the dropped packets:\n{}", run.summary()))?;
    let mut sum = 0;
    for r in &records {
        eq("record", (r.verdict.as_deref(), r.task.as_deref(), r.pid), (Some("denied"), Some("drops"), 0))?;
        sum += r.detail.get("dropped").and_then(|n| n.as_u64()).unwrap_or(0);
    }
    eq("packets dropped, over the records", sum, 3)?;
    let last = records.last().and_then(|r| r.detail.get("dropped_total")).and_then(|n| n.as_u64());
    eq("the last record's total", last, Some(3))?;
    Ok(())
}
