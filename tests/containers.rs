//! Containers and pods in events: the kernel stamps each event with the process's
//! cgroup, and agentmon names the container and pod from it. Real cgroups shaped as
//! the runtimes make them (no runtime or registry needed).

use std::{ffi::CString, os::unix::process::CommandExt, path::PathBuf};

use agentmon::event::{Event, Kind};

use crate::{
    R,
    support::{self, eq, workdir},
};

/// Cgroups made for the test, removed (deepest first) when it ends.
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn make(all: &mut Cgroups, rel: &str) -> Result<PathBuf, String> {
    let mut p = agentmon::enforce::cgroup::v2_root().ok_or("no cgroup2 mount")?;
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(part);
        if !p.exists() {
            std::fs::create_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            all.0.push(p.clone());
        }
    }
    Ok(p)
}

/// Runs `cmd` in cgroup `cg` (moved there between fork and exec).
fn enter(cmd: &mut std::process::Command, cg: &std::path::Path) -> Result<(), String> {
    let procs = CString::new(cg.join("cgroup.procs").to_str().unwrap()).map_err(|e| e.to_string())?;
    // SAFETY: between fork and exec: open, write and close only.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    Ok(())
}

pub fn events_name_their_container_and_pod() -> R {
    let d = workdir("containers");
    std::fs::create_dir_all(d.join("out")).map_err(|e| e.to_string())?;
    let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let salt = format!("{:x}", std::process::id());
    let id = format!("{salt}{}", "c".repeat(64 - salt.len()));
    let id2 = format!("{salt}{}", "d".repeat(64 - salt.len()));
    let mut made = Cgroups(Vec::new());
    // A Kubernetes container (cgroupfs driver) the agent is started in, and a
    // Docker container (systemd driver) one of its processes moves itself into.
    let pod_cg = make(&mut made, &format!("kubepods/besteffort/pod{uid}/{id}"))?;
    let docker = format!("/system.slice/docker-{id2}.scope");
    let docker_cg = make(&mut made, &docker)?;
    let task = d.join("task.yaml");
    std::fs::write(
        &task,
        format!(
            "id: in-pod\nmode: execute\nscope:\n  write: [\"{}/out/**\"]\n  exec: [\"/usr/bin/**\"]\n",
            d.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let script = format!(
        "touch {o}/a; echo $$ > {dc}/cgroup.procs && touch {o}/b",
        o = d.join("out").display(),
        dc = docker_cg.display()
    );
    let events = d.join("events.jsonl");
    let mut cmd = support::exec_command(
        &events,
        &["--task", task.to_str().unwrap()],
        &["/usr/bin/sh".into(), "-c".into(), script],
        &[],
        &d,
    );
    // agentmon exec itself starts in the pod's container, as an agent's entrypoint would.
    enter(&mut cmd, &pod_cg)?;
    let out = cmd.output().map_err(|e| e.to_string())?;
    eq(&format!("exit code ({})", String::from_utf8_lossy(&out.stderr)), out.status.code(), Some(0))?;
    // Started in a cgroup a user was delegated (a rootless container's, a user
    // session's): beneath it, the task's processes could move themselves out of the
    // task's cgroup with no privilege; its cgroup is agentmon's instead.
    let deleg = make(&mut made, &format!("delegated-{salt}/agent"))?;
    for f in [deleg.clone(), deleg.join("cgroup.procs")] {
        std::os::unix::fs::chown(&f, Some(1000), None).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let devents = d.join("delegated.jsonl");
    let mut cmd = support::exec_command(
        &devents,
        &["--task", task.to_str().unwrap()],
        &["/usr/bin/touch".into(), d.join("out/c").display().to_string()],
        &[],
        &d,
    );
    enter(&mut cmd, &deleg)?;
    let out = cmd.output().map_err(|e| e.to_string())?;
    eq(
        &format!("delegated: exit code ({})", String::from_utf8_lossy(&out.stderr)),
        out.status.code(),
        Some(0),
    )?;
    let (devs, _) = support::parse_stream(&std::fs::read_to_string(&devents).map_err(|e| e.to_string())?)?;
    let c = devs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == d.join("out/c").to_str())
        .ok_or("no file_create of out/c")?;
    let ours = c.cgroup.as_deref().is_some_and(|c| c.starts_with("/agentmon/"));
    eq(&format!("out/c: cgroup {:?} is agentmon's, not beneath a delegated one", c.cgroup), ours, true)?;
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let (evs, _) = support::parse_stream(&text)?;
    let find = |name: &str| -> Result<&Event, String> {
        let p = d.join("out").join(name);
        evs.iter()
            .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == p.to_str())
            .ok_or_else(|| format!("no file_create of {}", p.display()))
    };
    let named = |e: &Event| {
        (
            e.container.as_ref().map(|c| (c.id.clone(), c.runtime.clone())),
            e.pod.as_ref().map(|p| (p.uid.clone(), p.qos.clone())),
        )
    };
    // In the task's own cgroup, beneath the pod's container (whose limits still
    // hold it): the container and pod.
    let a = find("a")?;
    eq(
        "out/a: container and pod (from the cgroup the task came from)",
        named(a),
        (Some((id.clone(), "kubernetes".to_string())), Some((uid.to_string(), "besteffort".to_string()))),
    )?;
    let nested = format!("/kubepods/besteffort/pod{uid}/{id}/agentmon-");
    let beneath = a.cgroup.as_deref().is_some_and(|c| c.starts_with(&nested));
    eq(&format!("out/a: cgroup {:?} is the task's, beneath the container's", a.cgroup), beneath, true)?;
    // Moved into a Docker container: that one, and no pod.
    let b = find("b")?;
    eq("out/b: cgroup", b.cgroup.as_deref(), Some(docker.as_str()))?;
    eq("out/b: container and pod", named(b), (Some((id2.clone(), "docker".to_string())), None))?;
    // Wait for agentmon to have moved the process back before the cgroups go.
    let _ = support::wait(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(docker_cg.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
    });
    Ok(())
}

/// The image the container test runs: busybox alone, imported from a local tarball
/// (no registry).
const IMAGE: &str = "localhost/agentmon-test:busybox-1";

fn podman(args: &[&str]) -> Result<std::process::Output, String> {
    // runc: crun refuses cgroup v2 in hybrid mode, which this kind of machine runs.
    // Bounded: a storage lock a killed run left must not hang the tests.
    std::process::Command::new("timeout")
        .args(["120", "podman", "--runtime", "runc"])
        .args(args)
        .output()
        .map_err(|e| format!("podman (scripts/test.sh installs it): {e}"))
}

fn image(d: &std::path::Path) -> Result<(), String> {
    if podman(&["image", "exists", IMAGE])?.status.success() {
        return Ok(());
    }
    let root = d.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .map_err(|e| format!("/bin/busybox (busybox-static; scripts/test.sh installs it): {e}"))?;
    for a in ["sh", "touch", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).map_err(|e| e.to_string())?;
    }
    let tar = d.join("rootfs.tar");
    let o = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .map_err(|e| e.to_string())?;
    support::ensure(o.status.success(), || format!("tar: {}", String::from_utf8_lossy(&o.stderr)))?;
    let o = podman(&["import", tar.to_str().unwrap(), IMAGE])?;
    support::ensure(o.status.success(), || format!("podman import: {}", String::from_utf8_lossy(&o.stderr)))
}

/// A real container, run by Podman (runc) from Debian's packages: the daemon's
/// selector picks its agent up by the container's id, the task's cgroup is beneath
/// the container's (whose limits still hold it), and its events name the container
/// podman reports, with runtime `podman`.
pub fn a_real_container_is_named() -> R {
    use crate::daemon::{daemon_paths, start_daemon, stop};
    let d = workdir("podman");
    let out = d.join("out");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    image(&d)?;
    let limit = std::time::Duration::from_secs(20) * support::slowdown();
    // Waits to be picked up (the selector scans /proc), then writes; gives up after
    // the test would have.
    let tries = (limit.as_millis() / 100).to_string();
    let script = format!(
        "n=0; while [ ! -e /out/go ] && [ $n -lt {tries} ]; do sleep 0.1; n=$((n+1)); done; touch /out/made"
    );
    let vol = format!("{}:/out", out.display());
    let cidfile = d.join("cid");
    let mut args = vec!["create", "--rm", "--network", "none", "--cidfile", cidfile.to_str().unwrap()];
    args.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]);
    args.extend(["-v", &vol, IMAGE, "/bin/sh", "-c", &script]);
    let o = podman(&args)?;
    support::ensure(o.status.success(), || format!("podman create: {}", String::from_utf8_lossy(&o.stderr)))?;
    let id = std::fs::read_to_string(&cidfile).map_err(|e| e.to_string())?.trim().to_string();
    let task = d.join("agent.yaml");
    std::fs::write(
        &task,
        "id: boxed\nmode: execute\nscope:\n  write: [\"/out/**\"]\n  exec: [\"/bin/**\"]\n",
    )
    .map_err(|e| e.to_string())?;
    // This container and nothing else (not its podman client).
    let extra = format!("selectors:\n  - container: \"{id}\"\ndefault_task: {}\n", task.display());
    let started = start_daemon(&d, &extra);
    let ran = started.as_ref().map_err(|e| e.clone()).and_then(|_| {
        let (_, all) = daemon_paths(&d);
        let o = podman(&["start", &id])?;
        support::ensure(o.status.success(), || {
            format!("podman start: {}", String::from_utf8_lossy(&o.stderr))
        })?;
        let picked = || {
            let text = std::fs::read_to_string(&all).unwrap_or_default();
            support::parse_stream(&text).is_ok_and(|(evs, _)| {
                evs.iter().any(|e| {
                    e.kind == Kind::TaskStart && e.task.as_deref().is_some_and(|t| t.starts_with("boxed-"))
                })
            })
        };
        support::ensure(support::wait(limit, picked), || {
            "the daemon never picked the container's agent up".into()
        })?;
        std::fs::write(out.join("go"), "").map_err(|e| e.to_string())?;
        support::ensure(support::wait(limit, || out.join("made").exists()), || "the agent never wrote".into())
    });
    // Gone before the daemon stops: its task's end is recorded (a failed run's is
    // removed).
    if ran.is_err() {
        let _ = podman(&["rm", "-f", "-t", "0", &id]);
    }
    let _ = support::wait(limit, || !podman(&["container", "exists", &id]).is_ok_and(|o| o.status.success()));
    let said = started.and_then(stop);
    ran?;
    said?;
    let (_, all) = daemon_paths(&d);
    let (evs, _) = support::parse_stream(&std::fs::read_to_string(&all).map_err(|e| e.to_string())?)?;
    let made = evs
        .iter()
        .find(|e| e.kind == Kind::FileCreate && e.path.as_deref() == Some("/out/made"))
        .ok_or("no file_create of /out/made")?;
    eq(
        "the container (as podman named it)",
        made.container.as_ref().map(|c| (c.id.clone(), c.runtime.clone())),
        Some((id.clone(), "podman".to_string())),
    )?;
    // `…/libpod-ID/agentmon-…` with cgroupfs, `…/libpod-ID.scope/agentmon-…` under
    // systemd.
    let cg = made.cgroup.as_deref().unwrap_or("");
    let parts: Vec<&str> = cg.split('/').collect();
    let beneath = parts.windows(2).any(|w| {
        w[0].strip_prefix("libpod-").map(|r| r.trim_end_matches(".scope")) == Some(id.as_str())
            && w[1].starts_with("agentmon-")
    });
    eq(&format!("its cgroup {cg:?} is the task's, beneath the container's"), beneath, true)?;
    eq("its task", made.task.as_deref().is_some_and(|t| t.starts_with("boxed-")), true)?;
    Ok(())
}
