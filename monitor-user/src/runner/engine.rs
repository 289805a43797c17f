//! The state every arm of the runtime's loop works on: the kernel side, the
//! pipeline, the outputs, and the set-up. Control requests, task binding, selectors
//! and ticks all take `&mut Engine`; nothing else is built per request.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};

use super::{EXEC_TASK, RunError, pipeline::Pipeline, setup::Setup};
use crate::{
    enrich::Enricher,
    event::Event,
    judge::Judge,
    kernel::loader::{SensorConfig, Sensors},
    policy::RuleSet,
    sensitive::SensitiveSet,
    sink::Fanout,
};

/// How long one turn of the loop's ring arms reads records at most.
pub const DRAIN_TURN: std::time::Duration = std::time::Duration::from_millis(20);

pub struct Engine {
    pub sensors: Sensors,
    pub p: Pipeline,
    pub out: Fanout,
    /// The next free task cookie.
    pub next_task: u32,
    pub setup: Setup,
    /// The control mailboxes of the tasks launched (see [`super::callers::Mailbox`]).
    pub mailboxes: Vec<super::callers::Mailbox>,
    /// Host names being looked up again.
    pub hosts: super::hosts::Refresh,
    /// Delegations waiting for their host names' lookups.
    pub delegations: super::subtask::Waiting,
    /// The approval gates this daemon reads, by task and the exec that keeps their
    /// copy (taken at registration or back at a resume): one offered again by that
    /// exec is not read a second time.
    pub gated: std::collections::HashSet<(Arc<str>, u32)>,
    /// Operators waiting for kills with processes left.
    pub after_kill: Vec<super::serve::AfterKill>,
    /// Cgroups made for tasks about to start.
    pub reserved: super::prepared::Reservations,
}

impl Engine {
    /// Loads and attaches the kernel programs; the engine that serves them.
    pub fn load(
        ringbuf_bytes: u32,
        max_tracked: Option<u32>,
        sensitive: &SensitiveSet,
        rules: Option<RuleSet>,
        out: Fanout,
        setup: Setup,
    ) -> Result<Self, RunError> {
        let defaults = SensorConfig::default();
        // Reads of agentmon's private keys are reported whatever the patterns.
        let sensitive = &sensitive.clone().with_secrets(&setup.secrets);
        let cfg = SensorConfig {
            ringbuf_bytes,
            max_tracked: max_tracked.unwrap_or(defaults.max_tracked),
            sensitive: sensitive.clone(),
            secrets: setup.secrets.clone(),
            lsm: setup.layers.lsm,
            // A daemon's programs outlive it (`kernel::pin`).
            pin: setup.state.as_ref().map(|s| s.dir.clone()),
            // The daemon's load lasts; an exec's is for one command.
            fexit_auto: setup.state.is_some(),
            ..defaults
        };
        let mut sensors = Sensors::load(&cfg)?;
        let mut enr = Enricher::new(sensitive.clone(), Default::default());
        // Cookies a previous daemon gave out may still be in the kernel's maps.
        let mut next_task = EXEC_TASK.max(sensors.max_cookie() + 1);
        if let Some(st) = &setup.state {
            // Counters taken over go on from what was reported of them; fresh ones
            // start at nothing, whatever an older build's daemon reported.
            if sensors.taken_over() {
                enr.seed_lost(st.lost_reported());
                sensors.seed_drops(st.drops_reported());
            } else {
                st.save_lost(&Default::default());
                st.save_drops(&Default::default());
            }
            // Its guards' state goes with their tasks (forget_guards), so the maps
            // alone no longer say which cookies were given.
            next_task = next_task.max(st.next_cookie());
        }
        Ok(Self {
            next_task,
            sensors,
            p: Pipeline::new(enr, Judge::new(rules)),
            out,
            setup,
            mailboxes: Vec::new(),
            gated: Default::default(),
            hosts: Default::default(),
            delegations: Default::default(),
            after_kill: Vec::new(),
            reserved: Default::default(),
        })
    }

    /// Reads every record the kernel has ready.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        self.p.drain(ring, &mut self.out, &mut self.sensors, None);
    }

    /// The same for at most [`DRAIN_TURN`]: the loop's ring arms, which come round
    /// again at once, so that a storm leaves room for requests, approvals and ticks.
    pub fn drain_turn(&mut self, ring: &mut RingBuf<MapData>) {
        self.p.drain(ring, &mut self.out, &mut self.sensors, Some(DRAIN_TURN));
    }

    /// A cgroup for a task whose root `caller` is about to fork (runner/prepared.rs),
    /// under the next cookie: given out only if it is made.
    pub fn prepare(&mut self, caller: super::prepared::Asker) -> Result<crate::ctl::Prepared, String> {
        if !self.setup.layers.cgroups {
            return Err("this agentmon makes no task cgroups here".into());
        }
        let p = self.reserved.make(caller, self.next_task)?;
        self.cookie();
        Ok(p)
    }

    /// A task cookie not used before.
    pub fn cookie(&mut self) -> u32 {
        let c = self.next_task;
        self.next_task += 1;
        if let Some(st) = &self.setup.state {
            st.save_next_cookie(self.next_task);
        }
        c
    }

    /// Writes one record of agentmon's own to every output, at once.
    pub fn record(&mut self, ev: &Event) {
        self.out.send(ev);
        self.out.batch_end();
    }

    /// Records a tamper attempt (see [`Pipeline::tamper`]) and its alert, at once.
    pub fn tamper(&mut self, pid: u32, task: Option<u32>, what: &str, why: &str, refused: bool) {
        let (ev, alert) = self.p.tamper(pid, task, what, why, refused);
        tracing::warn!("tamper: pid {pid}: {what}: {why}");
        self.out.send(&ev);
        self.out.alert(&alert);
        self.out.batch_end();
    }

    /// The host name events carry.
    pub fn host(&self) -> Arc<str> {
        self.p.enr.host()
    }
}
