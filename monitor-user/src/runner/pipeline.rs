//! Records in, judged events out, and the containment a rule calls for carried out
//! before the next record is read.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};

use super::RunError;
use crate::{
    contain::{Act, By, Containment},
    decode::decode,
    enrich::Enricher,
    event::Event,
    gate::Gate,
    judge::Judge,
    kernel::loader::Sensors,
    policy::Action,
    sink::Sink,
};

/// Everything that turns records into judged events.
pub struct Pipeline {
    pub enr: Enricher,
    pub judge: Judge,
    pub contain: Containment,
    /// The approval gate of the task, if it has gated operations.
    pub gate: Option<Gate>,
}

impl Pipeline {
    /// Reads every record available now.
    pub fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        sink: &mut dyn Sink,
        sensors: &mut Sensors,
    ) -> Result<(), RunError> {
        while let Some(item) = ring.next() {
            // The record is borrowed until the event is built; then the ring slot is freed.
            let ev = match decode(&item) {
                Ok(raw) => self.enr.event(&raw),
                Err(e) => {
                    tracing::warn!("undecodable kernel record: {e}");
                    self.enr.decode_errors += 1;
                    None
                }
            };
            drop(item);
            if let Some(mut ev) = ev {
                if let Some(g) = self.gate.as_mut() {
                    g.annotate(&mut ev);
                }
                let alert = self.judge.apply(&mut ev, &self.enr.procs);
                // Containment first: the event is written a moment later either way.
                let action = alert.as_ref().and_then(|a| self.contain_for(&ev, &a.action, sensors));
                sink.send(&ev)?;
                if let Some(a) = alert {
                    sink.alert(&a)?;
                }
                if let Some(a) = action {
                    sink.send(&a)?;
                }
            }
        }
        Ok(())
    }

    /// Takes the calls the gate holds: refusals happen at once, requests are recorded.
    pub fn held_calls(&mut self, sensors: &Sensors, sink: &mut dyn Sink) -> Result<(), RunError> {
        let Some(g) = self.gate.as_mut() else { return Ok(()) };
        for ev in g.take(sensors, &self.enr, &self.judge) {
            sink.send(&ev)?;
        }
        // An approver watches the stream: do not wait for the next periodic flush.
        sink.flush()?;
        Ok(())
    }

    /// Denies the requests whose time ran out.
    pub fn expire_approvals(&mut self, sink: &mut dyn Sink) -> Result<(), RunError> {
        let Some(g) = self.gate.as_mut() else { return Ok(()) };
        for ev in g.expire() {
            sink.send(&ev)?;
        }
        sink.flush()?;
        Ok(())
    }

    /// Carries out a rule's `kill` or `freeze` on an enforced task.
    fn contain_for(&mut self, ev: &Event, action: &str, sensors: &mut Sensors) -> Option<Event> {
        let act = match action {
            a if a == Action::Kill.as_str() => Act::Kill,
            a if a == Action::Freeze.as_str() => Act::Freeze,
            _ => return None,
        };
        let id: Arc<str> = ev.task.clone()?;
        if !self.contain.enforced(&id) {
            return None;
        }
        let out =
            self.contain.act(sensors, &id, act, By::Policy(ev), self.enr.host(), self.enr.clock().now_wall());
        match &out.result {
            Ok(msg) => tracing::info!("{msg} ({})", ev.rule.as_deref().unwrap_or("scope")),
            Err(e) => tracing::error!("{} of task {id} failed: {e}", act.as_str()),
        }
        out.event
    }
}
