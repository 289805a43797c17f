//! An observed task's i386 and x32 calls, which the syscall tracepoints do not see:
//! its filter sends them here ([`super::filter::REPORT`]) to be recorded, and lets
//! them proceed.

use std::borrow::Cow;

use nix::errno::Errno;
use serde_json::json;

use super::{Gate, abi, caller_tamper, notify, notify::Notif};
use crate::{enrich::Enricher, event::Event, judge::Judge, kernel::loader::Sensors};

impl Gate {
    /// An observed task's i386 or x32 call (an enforced task's filter kills for
    /// them): a tamper record, as the agent asked (paths as written in its memory,
    /// not resolved), then the call proceeds. Observe mode decides nothing.
    pub(super) fn foreign(
        &mut self,
        n: Notif,
        abi: abi::Abi,
        sensors: &Sensors,
        enr: &Enricher,
        judge: &Judge,
    ) -> Option<Event> {
        let call = abi.call(n.nr);
        let (mut paths, mut stalled) = (Vec::new(), false);
        for &i in call.map(|c| c.1).unwrap_or_default() {
            // Both ABIs pass 32-bit pointers. Past the task's budget of waiting on
            // it, not read at all (said as unread).
            let (gate, addr) = (self.id, n.args[i] & 0xffff_ffff);
            let p = if self.budget.allows(std::time::Instant::now()) {
                self.timed(|| notify::read_cstr(gate, n.tid, addr))
            } else {
                Err(Errno::ETIMEDOUT)
            };
            stalled |= p == Err(Errno::ETIMEDOUT);
            paths.push(p.ok());
        }
        // Who asked, while the caller still waits.
        let mut ev = caller_tamper(&n, sensors, enr, judge);
        // What was read belongs to the calling thread only if it still waits.
        let valid = notify::valid(self.fd(), n.id);
        if let Err(e) = notify::proceed(self.fd(), n.id) {
            tracing::debug!("letting reported call {} proceed: {e}", n.id);
        }
        if !valid {
            return None;
        }
        let name = call.map(|c| c.0).unwrap_or("unknown");
        ev.syscall = Some(Cow::Borrowed(name));
        ev.verdict = Some(Cow::Borrowed("violation"));
        ev.action = Some(Cow::Borrowed("none"));
        let what = format!("{} system call {name}", abi.as_str());
        ev.reason = Some(format!(
            "{what}: the syscall tracepoints do not see this ABI; reported through the task's seccomp filter and \
             let through (observe mode)"
        ));
        ev.detail.insert("attempt".into(), json!(what));
        ev.detail.insert("abi".into(), json!(abi.as_str()));
        if stalled {
            // A page the agent serves itself (FUSE, userfaultfd): not waited for.
            ev.detail.insert("unread_ms".into(), json!(notify::MEM_WAIT.as_millis() as u64));
        }
        ev.detail.insert("nr".into(), json!(n.nr));
        if let abi::Abi::Other(arch) = abi {
            ev.detail.insert("arch".into(), json!(format!("{arch:#x}")));
        }
        let requested: Vec<_> =
            paths.iter().map(|p| p.as_ref().map(|c| c.to_string_lossy().into_owned())).collect();
        if let Some(Some(p)) = requested.first() {
            ev.detail.insert("requested_path".into(), json!(p));
        }
        if let Some(Some(p)) = requested.get(1) {
            ev.detail.insert("requested_new_path".into(), json!(p));
        }
        Some(ev)
    }
}
