//! The `hosts` scenario (tests/hosts.rs): a task and its sub-task send to the
//! addresses their host names have once the test has changed the names' records.

use std::{fs, net::UdpSocket, path::Path, process::Command};

use super::wait_for;

/// The errno of one UDP datagram to `to` (0: sent).
fn send(to: &str) -> i32 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.send_to(b"x", to))
        .map(|_| 0)
        .unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1))
}

fn append(p: &Path, line: &str) -> Result<(), String> {
    use std::io::Write;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The parent (`dir agentmon child.yaml slow.yaml`): delegates the sub-task whose
/// name is slow to look up, and once that lookup is asked (`asked`) the other, then
/// once `go` is there sends to grow.test's new address (repo/results.txt).
pub fn parent(d: &Path, args: &[String]) -> Result<(), String> {
    let [_, agentmon, child, slow] = args else {
        return Err("hosts needs: dir agentmon child.yaml slow.yaml".into());
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut slow = Command::new(agentmon)
        .args(["exec", "--quiet", "--task", slow, "--"])
        .arg(&me)
        .arg(d)
        .env("AGENTMON_SCENARIO", "hosts_slow")
        .spawn()
        .map_err(|e| e.to_string())?;
    wait_for(&d.join("asked"))?;
    let mut sub = Command::new(agentmon)
        .args(["exec", "--quiet", "--task", child, "--"])
        .arg(&me)
        .arg(d)
        .env("AGENTMON_SCENARIO", "hosts_sub")
        .spawn()
        .map_err(|e| e.to_string())?;
    wait_for(&d.join("go"))?;
    append(&d.join("repo/results.txt"), &format!("grown {}", send("127.0.8.6:443")))?;
    let st = sub.wait().map_err(|e| e.to_string())?;
    let slow = slow.wait().map_err(|e| e.to_string())?;
    fs::write(d.join("repo/slow-rc"), format!("{:?}", slow.code())).map_err(|e| e.to_string())?;
    fs::write(d.join("repo/sub-rc"), format!("{:?}", st.code())).map_err(|e| e.to_string())
}

/// The sub-task: says it runs (repo/sub/ready), then once `go` is there sends to
/// sub.test's first address and to the one it has now (repo/sub/results.txt).
pub fn sub(d: &Path) -> Result<(), String> {
    fs::write(d.join("repo/sub/ready"), b"").map_err(|e| e.to_string())?;
    wait_for(&d.join("go"))?;
    let out = d.join("repo/sub/results.txt");
    append(&out, &format!("first {}", send("127.0.9.1:443")))?;
    append(&out, &format!("moved {}", send("127.0.7.7:443")))
}
