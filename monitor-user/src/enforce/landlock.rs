//! Layer 1: the task's file scope, executables and TCP connect ports as a Landlock
//! ruleset, applied to the command between fork and exec (inherited by every
//! descendant; a nested task can only add restrictions).
//!
//! What Landlock can express decides what is accepted: write/delete scopes of the
//! form `DIR/**` or an exact existing file; exec scopes of `DIR/**`, exact files, or
//! a glob in the last component (expanded at launch). Anything else in an enforced
//! task is refused with the reason, never approximated. Reads are not restricted (a
//! read allowlist would have to list every library); sensitive reads stay judged.

use std::{
    fs,
    path::{Path, PathBuf},
};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
};

use crate::task::{
    Mode, Task,
    scope::{Endpoint, Ports, is_glob, literal_prefix},
};

/// Signal scoping (tamper protection) arrived with ABI 6.
pub const NEEDED_ABI: i32 = 6;

/// Writes to these devices are harmless and expected (`> /dev/null`, the terminal).
pub(super) const QUIET_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts"];

/// The running kernel's Landlock ABI version (0: none).
pub fn abi() -> i32 {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    v.max(0) as i32
}

pub(super) type Refusal = (&'static str, String);

/// The directory a `DIR/**` pattern names, or the exact path of a glob-free one.
pub(super) enum Target {
    Beneath(PathBuf),
    Exact(PathBuf),
}

pub(super) fn target(clause: &'static str, pattern: &str) -> Result<Target, Refusal> {
    if let Some(dir) = pattern.strip_suffix("/**")
        && !is_glob(dir)
    {
        let d = PathBuf::from(if dir.is_empty() { "/" } else { dir });
        if !d.is_dir() {
            return Err((
                clause,
                format!("{pattern}: {} is not an existing directory at launch", d.display()),
            ));
        }
        return Ok(Target::Beneath(d));
    }
    if is_glob(pattern) {
        return Err((
            clause,
            format!("{pattern} cannot be expressed to Landlock; use DIR/** or an exact path"),
        ));
    }
    let p = PathBuf::from(pattern);
    if p.is_dir() {
        return Err((
            clause,
            format!("{pattern} is a directory; write {pattern}/** to allow what is beneath it"),
        ));
    }
    if !p.exists() {
        return Err((
            clause,
            format!("{pattern} does not exist at launch (Landlock rules need an existing file)"),
        ));
    }
    Ok(Target::Exact(p))
}

fn path_fd(p: &Path) -> Result<PathFd, Refusal> {
    PathFd::new(p).map_err(|e| ("scope", format!("cannot open {}: {e}", p.display())))
}

fn ll_err(e: impl std::fmt::Display) -> Refusal {
    ("landlock", e.to_string())
}

/// The directory a propose-mode task writes in, which must exist at launch.
pub(super) fn propose_dir(task: &Task) -> Result<PathBuf, Refusal> {
    let d = task.propose_dir.clone().ok_or(("scope.propose_dir", "missing".to_string()))?;
    if !d.is_dir() {
        return Err(("scope.propose_dir", format!("{} is not an existing directory at launch", d.display())));
    }
    Ok(d)
}

/// Executables an exec pattern allows now: a last-component glob is expanded.
pub(super) fn exec_files(pattern: &str) -> Result<Vec<Target>, Refusal> {
    if pattern.ends_with("/**") || !is_glob(pattern) {
        return Ok(vec![target("scope.exec", pattern)?]);
    }
    let dir = literal_prefix(pattern);
    let rest = &pattern[dir.len()..];
    if rest.trim_start_matches('/').contains('/') {
        return Err((
            "scope.exec",
            format!("{pattern}: only the last component may be a glob under enforcement"),
        ));
    }
    let glob = globset::Glob::new(pattern).map_err(|e| ("scope.exec", e.to_string()))?.compile_matcher();
    let mut out = Vec::new();
    for e in fs::read_dir(if dir.is_empty() { "/" } else { dir })
        .map_err(|e| ("scope.exec", format!("{pattern}: {e}")))?
    {
        let p = e.map_err(|e| ("scope.exec", e.to_string()))?.path();
        if glob.is_match(&p) && p.is_file() {
            out.push(Target::Exact(p));
        }
    }
    Ok(out)
}

/// The first `n` bytes of file `p` (fewer if it is shorter).
pub fn head(p: &Path, n: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    fs::File::open(p).ok()?.take(n).read_to_end(&mut data).ok()?;
    Some(data)
}

/// The ELF interpreter (PT_INTERP) of an executable, if it has one. The kernel
/// opens it for execution too, so it must be allowed alongside.
pub fn elf_interpreter(p: &Path) -> Option<PathBuf> {
    use object::read::elf::{FileHeader, ProgramHeader};
    // The program headers and the interpreter's name are at the start of the file:
    // a 200 MB binary is not read whole (on a slow filesystem that takes minutes).
    // Only the file header and program headers are parsed (the section headers,
    // at the end, are not read).
    let data = head(p, 64 << 10)?;
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data).ok()?;
    let e = header.endian().ok()?;
    for ph in header.program_headers(e, &*data).ok()? {
        if ph.p_type(e) == object::elf::PT_INTERP {
            let bytes = ph.data(e, &*data).ok()?;
            let s = std::str::from_utf8(bytes).ok()?.trim_end_matches('\0');
            return Some(PathBuf::from(s));
        }
    }
    None
}

/// TCP ports the connect scope allows, or None when some endpoint allows any port.
fn connect_ports(eps: &[Endpoint]) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    for ep in eps {
        let p = match ep {
            Endpoint::Net { ports, .. } | Endpoint::Host { ports, .. } => ports,
            Endpoint::Unix { .. } => continue,
        };
        if *p == Ports::ANY {
            return None;
        }
        ports.extend(p.lo..=p.hi);
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

/// Builds the ruleset of `task`; `launch` are files the command itself executes.
pub fn ruleset(task: &Task, abi_version: i32, launch: &[PathBuf]) -> Result<RulesetCreated, Refusal> {
    let abi = ABI::from(abi_version);
    let write: BitFlags<AccessFs> = AccessFs::from_write(abi);
    let remove: BitFlags<AccessFs> = AccessFs::RemoveFile | AccessFs::RemoveDir;
    // What the write scope grants, and where.
    let (write_grant, write_targets) = match task.mode {
        Mode::Read => (write, Vec::new()),
        // No deletes in propose mode; renames share the right, so they go too.
        Mode::Propose => (write & !remove, vec![Target::Beneath(propose_dir(task)?)]),
        Mode::Execute => {
            let covered = task
                .write
                .patterns
                .iter()
                .all(|w| task.delete.patterns.iter().any(|d| crate::task::scope::pattern_covers(d, w)));
            let grant = if covered {
                write
            } else if task.delete.is_empty() {
                // Deleting and renaming are one right to Landlock: with no delete scope
                // both are denied (stricter than declared, never weaker).
                write & !remove
            } else {
                return Err((
                    "scope.delete",
                    "narrower than scope.write: Landlock grants deletion wherever it grants renaming, so a \
                     partial delete scope needs the approval-gate layer, which this version does not have"
                        .into(),
                ));
            };
            let t = task
                .write
                .patterns
                .iter()
                .map(|p| target("scope.write", p))
                .collect::<Result<Vec<_>, _>>()?;
            (grant, t)
        }
    };
    let ports = connect_ports(&task.connect);
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(write | AccessFs::Execute)
        .map_err(ll_err)?
        .scope(Scope::Signal)
        .map_err(ll_err)?;
    if ports.is_some() {
        rs = rs.handle_access(AccessNet::ConnectTcp).map_err(ll_err)?;
    }
    let mut c = rs.create().map_err(ll_err)?;
    for t in &write_targets {
        c = match t {
            Target::Beneath(d) => c.add_rule(PathBeneath::new(path_fd(d)?, write_grant)),
            Target::Exact(f) => c.add_rule(PathBeneath::new(path_fd(f)?, write_grant & file_rights(abi))),
        }
        .map_err(ll_err)?;
    }
    for dev in QUIET_DEVICES.iter().map(Path::new).filter(|p| p.exists()) {
        let rights =
            if dev.is_dir() { AccessFs::WriteFile.into() } else { AccessFs::WriteFile | AccessFs::Truncate };
        c = c.add_rule(PathBeneath::new(path_fd(dev)?, rights & write)).map_err(ll_err)?;
    }
    let mut exec: Vec<Target> = Vec::new();
    for p in &task.exec.patterns {
        exec.extend(exec_files(p)?);
    }
    exec.extend(launch.iter().filter(|p| p.exists()).map(|p| Target::Exact(p.clone())));
    // The interpreters of every allowed file, and of agentmon itself (the system's
    // loader, for executables allowed by directory).
    let mut interps: Vec<PathBuf> = exec
        .iter()
        .filter_map(|t| match t {
            Target::Exact(f) => elf_interpreter(f),
            Target::Beneath(_) => None,
        })
        .collect();
    interps.extend(std::env::current_exe().ok().and_then(|p| elf_interpreter(&p)));
    exec.extend(interps.into_iter().filter(|p| p.exists()).map(Target::Exact));
    for t in &exec {
        let (p, rights) = match t {
            Target::Beneath(d) => (d, BitFlags::from(AccessFs::Execute)),
            Target::Exact(f) => (f, BitFlags::from(AccessFs::Execute)),
        };
        c = c.add_rule(PathBeneath::new(path_fd(p)?, rights)).map_err(ll_err)?;
    }
    if let Some(ports) = ports {
        for port in ports {
            c = c.add_rule(NetPort::new(port, AccessNet::ConnectTcp)).map_err(ll_err)?;
        }
    }
    Ok(c)
}

/// Rights that apply to a file (not a directory).
fn file_rights(abi: ABI) -> BitFlags<AccessFs> {
    (AccessFs::WriteFile | AccessFs::Truncate | AccessFs::Execute | AccessFs::ReadFile)
        & (AccessFs::from_all(abi) | AccessFs::Execute)
}
