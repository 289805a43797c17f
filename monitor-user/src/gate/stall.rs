//! A held call whose slow steps ([`worker`]) gave no answer: it is answered with an
//! error, and the stall said in a tamper record, limited like refusals.

use std::{borrow::Cow, time::Instant};

use nix::errno::Errno;
use serde_json::json;

use super::{
    Gate, caller_tamper, errno_name,
    notify::{self, Call, Creds, Notif},
};
use crate::{enrich::Enricher, event::Event, judge::Judge, kernel::loader::Sensors, worker};

/// How a step agentmon takes for a held call failed to give an answer.
pub(super) enum Wait {
    /// It did not end within the wait: what did not, and the wait.
    Late(&'static str, std::time::Duration),
    /// It was not tried: the task's steps already stuck take its share of the
    /// workers (ETIMEDOUT), or every worker is taken (EAGAIN).
    Refused,
    /// It was not tried: the task's slow steps spent its budget ([`worker::Budget`]).
    Spent,
}

impl Gate {
    /// `step`, its wait counted against the task's budget ([`worker::Budget`]).
    pub(super) fn timed<T>(&mut self, step: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let done = step();
        self.budget.spend(began, Instant::now());
        done
    }

    /// [`notify::perform`], its wait counted against the budget.
    pub(super) fn perform(&mut self, call: Call, creds: Creds) -> Result<Result<i64, Errno>, worker::Stuck> {
        let gate = self.id;
        self.timed(|| notify::perform(gate, call, creds))
    }

    /// Held call `n` (of syscall `name`) that a step agentmon takes for it could not
    /// answer ([`worker`]): answered `errno`, and a tamper record of the stall,
    /// limited like refusals (an agent whose steps are stuck has every later call
    /// refused at once, at whatever rate it makes them).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stuck(
        &mut self,
        n: Notif,
        name: &'static str,
        errno: Errno,
        wait: Wait,
        answer: impl Fn(Result<i64, Errno>) -> bool,
        sensors: &Sensors,
        enr: &Enricher,
        judge: &Judge,
    ) -> Option<Event> {
        const KEY: &str = "stalling agentmon";
        let what = match wait {
            Wait::Late(what, wait) => format!("the held {name}'s {what} within {} ms", wait.as_millis()),
            Wait::Refused if errno == Errno::ETIMEDOUT => format!(
                "the held {name} was not tried: {} steps for the task already wait on the agent",
                worker::MAX_EACH
            ),
            Wait::Spent => format!(
                "the held {name} was not tried: the task's held calls kept agentmon waiting on the agent {} ms \
                 within {} s",
                worker::Budget::SPEND.as_millis(),
                worker::Budget::WINDOW.as_secs()
            ),
            Wait::Refused => {
                // agentmon's own capacity, no one's stall: said in its log only.
                tracing::warn!("held {name} of thread {} refused: every worker is taken", n.tid);
                answer(Err(errno));
                return None;
            }
        };
        let Some(held) = self.refusals.noise.allow(KEY) else {
            answer(Err(errno));
            return None;
        };
        let mut ev = caller_tamper(&n, sensors, enr, judge);
        ev.syscall = Some(Cow::Borrowed(name));
        ev.error = Some(Cow::Owned(errno_name(errno)));
        ev.reason = Some(format!("{what}; answered {}", errno_name(errno)));
        ev.detail.insert("attempt".into(), json!(KEY));
        if held > 0 {
            ev.detail.insert("unrecorded_before".into(), json!(held));
        }
        self.refusals.last.insert(KEY, ev.clone());
        answer(Err(errno));
        Some(ev)
    }
}
