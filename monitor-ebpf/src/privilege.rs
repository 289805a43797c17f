//! Privilege-relevant calls: ptrace, bpf, the setuid/setgid family and capset.
//! (Fileless exec is flagged on the exec event, see process.rs.)

use aya_ebpf::helpers::generated as h;
use monitor_common::{kind, op};

use crate::kern::sys;

sys!(sys_exit_ptrace, op::PTRACE, kind::PTRACE, |a, ev| {
    ev.arg(0, a.get(0));
    ev.arg(1, a.get(1));
});
sys!(sys_exit_bpf, op::BPF, kind::BPF, |a, ev| {
    ev.arg(0, a.get(0));
});

macro_rules! ids {
    ($exit:ident, $op:expr) => {
        sys!($exit, $op, kind::PRIVILEGE, |a, ev| {
            ev.arg(0, a.get(0));
            ev.arg(1, a.get(1));
            ev.arg(2, a.get(2));
        });
    };
}
ids!(sys_exit_setuid, op::SETUID);
ids!(sys_exit_setgid, op::SETGID);
ids!(sys_exit_setreuid, op::SETREUID);
ids!(sys_exit_setregid, op::SETREGID);
ids!(sys_exit_setresuid, op::SETRESUID);
ids!(sys_exit_setresgid, op::SETRESGID);
ids!(sys_exit_setfsuid, op::SETFSUID);
ids!(sys_exit_setfsgid, op::SETFSGID);

// capset(header, data): reads the first __user_cap_data_struct (effective,
// permitted, inheritable; low 32 capabilities).
sys!(sys_exit_capset, op::CAPSET, kind::PRIVILEGE, |a, ev| {
    let mut d = [0u32; 3];
    if unsafe { h::bpf_probe_read_user((&raw mut d).cast(), 12, a.get(1) as *const _) } == 0 {
        ev.arg(0, d[0] as u64);
        ev.arg(1, d[1] as u64);
        ev.arg(2, d[2] as u64);
    }
});
