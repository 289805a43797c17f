//! Privilege-relevant calls: ptrace, bpf, the setuid/setgid family and capset.
//! (Fileless exec is flagged on the exec event, see process.rs.)

use aya_ebpf::helpers::generated as h;
use monitor_common::{kind, op};

use crate::file::sys;

sys!(sys_enter_ptrace, sys_exit_ptrace, op::PTRACE, kind::PTRACE, 2, |st, ev| {
    ev.arg(0, st.args[0]);
    ev.arg(1, st.args[1]);
});
sys!(sys_enter_bpf, sys_exit_bpf, op::BPF, kind::BPF, 1, |st, ev| {
    ev.arg(0, st.args[0]);
});

macro_rules! ids {
    ($enter:ident, $exit:ident, $op:expr, $n:expr) => {
        sys!($enter, $exit, $op, kind::PRIVILEGE, $n, |st, ev| {
            ev.arg(0, st.args[0]);
            ev.arg(1, st.args[1]);
            ev.arg(2, st.args[2]);
        });
    };
}
ids!(sys_enter_setuid, sys_exit_setuid, op::SETUID, 1);
ids!(sys_enter_setgid, sys_exit_setgid, op::SETGID, 1);
ids!(sys_enter_setreuid, sys_exit_setreuid, op::SETREUID, 2);
ids!(sys_enter_setregid, sys_exit_setregid, op::SETREGID, 2);
ids!(sys_enter_setresuid, sys_exit_setresuid, op::SETRESUID, 3);
ids!(sys_enter_setresgid, sys_exit_setresgid, op::SETRESGID, 3);
ids!(sys_enter_setfsuid, sys_exit_setfsuid, op::SETFSUID, 1);
ids!(sys_enter_setfsgid, sys_exit_setfsgid, op::SETFSGID, 1);

// capset(header, data): reads the first __user_cap_data_struct (effective,
// permitted, inheritable; low 32 capabilities).
sys!(sys_enter_capset, sys_exit_capset, op::CAPSET, kind::PRIVILEGE, 2, |st, ev| {
    let mut d = [0u32; 3];
    if unsafe { h::bpf_probe_read_user((&raw mut d).cast(), 12, st.args[1] as *const _) } == 0 {
        ev.arg(0, d[0] as u64);
        ev.arg(1, d[1] as u64);
        ev.arg(2, d[2] as u64);
    }
});
