//! What the hook mechanism costs before agentmon does anything, so the overhead table
//! can say how much of a ratio is agentmon's and how much is the kernel's:
//!
//! - a raw `sys_exit` tracepoint program (the alternative to per-syscall tracepoints:
//!   one program on every syscall's exit, dispatching by number) that reads the pid
//!   and returns — hand-assembled here, so measuring it needs no second BPF object;
//! - per-program run time as the kernel counts it (`BPF_ENABLE_STATS`): the cost of
//!   agentmon's own handler per call, free of the run-to-run noise of the loops.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::Context;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `bpf(cmd, attr)` with a zero-padded attribute block (the kernel requires unused
/// trailing bytes to be zero).
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, writable buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success PROG_LOAD and RAW_TRACEPOINT_OPEN return a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// One BPF instruction: opcode, dst/src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// A raw `sys_exit` program attached while this lives (the link closes on drop).
pub struct RawSysExit {
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// Loads and attaches `call bpf_get_current_pid_tgid; r0 = 0; exit` on raw tracepoint
/// `sys_exit`: what every syscall of every process would pay, at the least, if
/// agentmon hooked all syscall exits with one program instead of one tracepoint each.
pub fn raw_sys_exit() -> anyhow::Result<RawSysExit> {
    let code: Vec<u8> = [
        insn(0x85, 0, 0, 0, 14), // call bpf_get_current_pid_tgid
        insn(0xb7, 0, 0, 0, 0),  // r0 = 0
        insn(0x95, 0, 0, 0, 0),  // exit
    ]
    .concat();
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_le_bytes());
    attr[4..8].copy_from_slice(&((code.len() / 8) as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(code.as_ptr() as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
    attr[24..28].copy_from_slice(&1u32.to_le_bytes());
    attr[28..32].copy_from_slice(&(log.len() as u32).to_le_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_le_bytes());
    attr[48..59].copy_from_slice(b"bench_floor");
    let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        anyhow::anyhow!("load raw_tracepoint floor program: {e}: {}", String::from_utf8_lossy(&log[..end]))
    })?;
    let name = c"sys_exit";
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(name.as_ptr() as u64).to_le_bytes());
    attr[8..12].copy_from_slice(&(prog.as_raw_fd() as u32).to_le_bytes());
    let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr).context("attach raw_tracepoint sys_exit")?;
    Ok(RawSysExit { _prog: prog, _link: link })
}

/// Every loaded program, by id: (name as the kernel keeps it, run time ns, runs). An
/// entry that cannot be read (a program unloaded while listing) is left out.
pub fn programs() -> HashMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_string();
            (p.id(), (name, p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect()
}

/// Kernel accounting of BPF program run time, on while this lives.
pub struct RunStats {
    _on: OwnedFd,
}

impl RunStats {
    pub fn enable() -> anyhow::Result<RunStats> {
        let on = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
        Ok(RunStats { _on: on })
    }

    /// (run time ns, runs) of each loaded program named `name`, by program id. An
    /// entry that cannot be read (a program unloaded while listing) is left out.
    pub fn of(&self, name: &str) -> HashMap<u32, (u64, u64)> {
        // The kernel keeps 15 bytes of a program's name.
        let short = &name[..name.len().min(15)];
        programs().into_iter().filter(|(_, (n, ..))| n == short).map(|(id, (_, t, n))| (id, (t, n))).collect()
    }

    /// Every loaded program that ran at least `min_runs` times during `f`: (name,
    /// runs, ns per run), most runs first. Host-wide, like [`Self::per_call`].
    pub fn ran(
        &self,
        min_runs: u64,
        f: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<(String, u64, f64)>> {
        let before = programs();
        f()?;
        let mut v: Vec<(String, u64, f64)> = programs()
            .into_iter()
            .filter_map(|(id, (name, t, n))| {
                let (t0, n0) = before.get(&id).map_or((0, 0), |(_, t, n)| (*t, *n));
                let dn = n.checked_sub(n0)?;
                (dn >= min_runs.max(1)).then(|| (name, dn, t.saturating_sub(t0) as f64 / dn as f64))
            })
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(v)
    }

    /// Run time per call of the program named `name` that ran most often during
    /// `f` (names are cut to 15 bytes, so `sys_exit_openat2` shares one with
    /// `sys_exit_openat`: the loop's own syscall picks it out). Host-wide: other
    /// processes' calls of that syscall are in it too, the loop's dominate.
    pub fn per_call(&self, name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
        let before = self.of(name);
        f()?;
        let after = self.of(name);
        let (dt, dn) = after
            .iter()
            .filter_map(|(id, (t, n))| {
                let (t0, n0) = before.get(id)?;
                Some((t.checked_sub(*t0)?, n.checked_sub(*n0)?))
            })
            .max_by_key(|(_, n)| *n)
            .with_context(|| format!("no BPF program named {name} stayed loaded during the run"))?;
        if dn == 0 {
            anyhow::bail!("{name} did not run during the run");
        }
        Ok(dt as f64 / dn as f64)
    }
}
