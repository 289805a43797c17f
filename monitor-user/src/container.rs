//! Which container and pod a process is in, told from its cgroup v2 path as the
//! runtimes name their cgroups (pure: a path in, names out).
//!
//! ```text
//! /system.slice/docker-<id>.scope                                 docker (systemd driver)
//! /docker/<id>                                                    docker (cgroupfs driver)
//! /kubepods.slice/kubepods-burstable.slice/
//!     kubepods-burstable-pod<uid_with_underscores>.slice/
//!     cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope   Kubernetes (systemd driver)
//! /kubepods/burstable/pod<uid>/<id>                               Kubernetes (cgroupfs driver)
//! /machine.slice/libpod-<id>.scope, /libpod_parent/libpod-<id>     podman
//! /machine.slice/systemd-nspawn@<name>.service, machine-<name>.scope   systemd-nspawn
//! /lxc.payload.<name>/...                                         LXC
//! ```
//! A Kubernetes pod's QoS class is its slice's (`besteffort`, `burstable`, or
//! neither: `guaranteed`). Each name counts only where its runtime puts it, and the
//! outermost wins: a cgroup made below a container, or a look-alike name in a user's
//! own delegated subtree, is no container of its own. Anything else is no container.

use serde::{Deserialize, Serialize};

/// The container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's id (64 hex digits), or the machine's name (nspawn, LXC).
    pub id: String,
    /// `docker`, `containerd`, `cri-o`, `podman`, `systemd-nspawn`, `lxc`, or
    /// `kubernetes` (a pod's container whose runtime the path does not name).
    pub runtime: String,
}

/// The Kubernetes pod a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub uid: String,
    pub qos: String,
}

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<prefix><id>.scope` with a 64-hex id.
fn scoped<'a>(c: &'a str, prefix: &str) -> Option<&'a str> {
    c.strip_prefix(prefix)?.strip_suffix(".scope").filter(|id| hex64(id))
}

/// A pod's uid from its slice or directory name (`…pod<uid>.slice`, `pod<uid>`); the
/// systemd driver writes the uid's dashes as underscores.
fn pod_uid(c: &str) -> Option<String> {
    let rest = c.strip_suffix(".slice").unwrap_or(c);
    let uid = &rest[rest.rfind("pod")? + 3..];
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The container and pod of the cgroup at `path` (as /proc/PID/cgroup's `0::` line).
pub fn of_cgroup(path: &str) -> (Option<Container>, Option<Pod>) {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let kube = parts.first().is_some_and(|p| *p == "kubepods.slice" || *p == "kubepods");
    let pod = if kube {
        // The QoS slice or directory right under kubepods.
        let q = parts.get(1).copied().unwrap_or_default();
        let qos = if q == "besteffort" || q == "kubepods-besteffort.slice" {
            "besteffort"
        } else if q == "burstable" || q == "kubepods-burstable.slice" {
            "burstable"
        } else {
            "guaranteed"
        };
        // The pod's slice or directory: right under its QoS class's, or under
        // kubepods itself (guaranteed).
        parts.iter().take(3).skip(1).find_map(|p| pod_uid(p)).map(|uid| Pod { uid, qos: qos.into() })
    } else {
        None
    };
    let mk = |id: &str, runtime: &str| Some(Container { id: id.into(), runtime: runtime.into() });
    // Each name only where its runtime puts it, and the outermost one wins: a
    // cgroup made below a container, or a look-alike name elsewhere (a user's own
    // delegated subtree), is not another container.
    for (i, c) in parts.iter().enumerate() {
        let parent = if i > 0 { parts[i - 1] } else { "" };
        // A pod's containers sit directly under its slice or directory.
        let in_pod = kube && pod_uid(parent).is_some();
        let system = i == 1 && parent == "system.slice";
        let machine = i == 1 && parent == "machine.slice";
        let found = if let Some(id) = scoped(c, "docker-").filter(|_| system || in_pod) {
            mk(id, "docker")
        } else if let Some(id) = scoped(c, "cri-containerd-").filter(|_| system || in_pod) {
            mk(id, "containerd")
        } else if let Some(id) = scoped(c, "crio-").filter(|_| system || in_pod) {
            mk(id, "cri-o")
        } else if let Some(id) = scoped(c, "libpod-").filter(|_| machine) {
            mk(id, "podman")
        } else if let Some(id) =
            c.strip_prefix("libpod-").filter(|id| hex64(id) && i == 1 && parent == "libpod_parent")
        {
            mk(id, "podman")
        } else if let Some(name) =
            c.strip_prefix("systemd-nspawn@").and_then(|n| n.strip_suffix(".service")).filter(|_| machine)
        {
            mk(&name.replace("\\x2d", "-"), "systemd-nspawn")
        } else if let Some(name) = c
            .strip_prefix("machine-")
            .and_then(|n| n.strip_suffix(".scope"))
            .filter(|n| machine && !n.starts_with("qemu"))
        {
            mk(&name.replace("\\x2d", "-"), "systemd-nspawn")
        } else if let Some(name) = c.strip_prefix("lxc.payload.").filter(|_| i == 0) {
            mk(name, "lxc")
        } else if hex64(c) && i == 1 && parent == "docker" {
            mk(c, "docker")
        } else if hex64(c) && in_pod && !parts[0].ends_with(".slice") {
            // The cgroupfs driver: the bare id under the pod's directory.
            mk(c, "kubernetes")
        } else {
            None
        };
        if found.is_some() {
            return (found, pod);
        }
    }
    (None, pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9a4e5b6d7c8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    fn c(path: &str) -> Option<(String, String)> {
        of_cgroup(path).0.map(|c| (c.id, c.runtime))
    }

    #[test]
    fn runtimes_are_told_from_their_cgroup_names() {
        let want = |rt: &str| Some((ID.to_string(), rt.to_string()));
        assert_eq!(c(&format!("/system.slice/docker-{ID}.scope")), want("docker"));
        assert_eq!(c(&format!("/docker/{ID}")), want("docker"));
        assert_eq!(c(&format!("/machine.slice/libpod-{ID}.scope/container")), want("podman"));
        assert_eq!(c(&format!("/libpod_parent/libpod-{ID}")), want("podman"));
        assert_eq!(
            c("/machine.slice/systemd-nspawn@build\\x2dbox.service/payload"),
            Some(("build-box".into(), "systemd-nspawn".into()))
        );
        assert_eq!(c("/lxc.payload.web/init.scope"), Some(("web".into(), "lxc".into())));
        // Not containers: a user's session, a service, a hex name elsewhere, a short id.
        for p in
            ["/user.slice/user-1000.slice/session-3.scope", "/system.slice/ssh.service", &format!("/x/{ID}")]
        {
            assert_eq!(of_cgroup(p), (None, None), "{p}");
        }
        assert_eq!(c("/system.slice/docker-abc.scope"), None);
        // Look-alikes where no runtime puts them: a user's delegated subtree, a
        // cgroup made below a container (the outer one stays), a VM's machine scope.
        let user = format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope");
        assert_eq!(of_cgroup(&user), (None, None));
        let inner = "4".repeat(64);
        assert_eq!(c(&format!("/system.slice/docker-{ID}.scope/docker-{inner}.scope")), want("docker"));
        assert_eq!(c("/machine.slice/machine-qemu\\x2d1\\x2dvm.scope"), None);
        assert_eq!(c(&format!("/agentmon/12-3/docker-{ID}.scope")), None);
    }

    #[test]
    fn pods_and_their_qos_from_the_kubepods_hierarchy() {
        let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let sd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        let (ct, pod) = of_cgroup(&sd);
        assert_eq!(ct.map(|c| c.runtime), Some("containerd".into()));
        assert_eq!(pod, Some(Pod { uid: uid.into(), qos: "besteffort".into() }));
        let fs = format!("/kubepods/burstable/pod{uid}/{ID}");
        let (ct, pod) = of_cgroup(&fs);
        assert_eq!(ct, Some(Container { id: ID.into(), runtime: "kubernetes".into() }));
        assert_eq!(pod.map(|p| p.qos), Some("burstable".into()));
        let guaranteed =
            format!("/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope", uid.replace('-', "_"));
        let (ct, pod) = of_cgroup(&guaranteed);
        assert_eq!(
            (ct.map(|c| c.runtime), pod.map(|p| p.qos)),
            (Some("cri-o".into()), Some("guaranteed".into()))
        );
        // The pod's own slice (its pause process's parent): a pod, no container.
        let (ct, pod) = of_cgroup(&format!("/kubepods/besteffort/pod{uid}"));
        assert!(ct.is_none() && pod.is_some());
    }
}
