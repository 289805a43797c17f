//! `agentmon exec`: load the sensors, launch the command as a tracked task, stream its
//! tree's events to the sink until it exits, then return its exit status.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use aya::maps::{MapData, RingBuf};
use nix::{sys::signal::Signal, sys::wait::WaitStatus, unistd::Pid};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    decode::decode,
    enrich::Enricher,
    kernel::loader::{POLL_INTERVAL, SensorConfig, Sensors},
    launch::{self, LaunchError},
    proctable::Proc,
    sensitive::SensitiveSet,
    sink::{JsonLines, Sink},
};

/// Task cookie of the single task an `exec` runs.
pub const EXEC_TASK: u32 = 1;

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub cmd: Vec<String>,
    pub events: Option<PathBuf>,
    pub format: crate::sink::Format,
    pub sensitive: SensitiveSet,
    pub ringbuf_bytes: u32,
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] crate::kernel::loader::LoadError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Launch(e) => e.exit_code(),
            _ => 125,
        }
    }
}

/// Reads every record available now; returns how many it read.
fn drain(ring: &mut RingBuf<MapData>, enr: &mut Enricher, sink: &mut dyn Sink) -> Result<usize, RunError> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        // The record is borrowed until the event is built; then the ring slot is freed.
        match decode(&item) {
            Ok(raw) => {
                if let Some(ev) = enr.event(&raw) {
                    drop(raw);
                    drop(item);
                    sink.send(&ev)?;
                }
            }
            Err(e) => {
                tracing::warn!("undecodable kernel record: {e}");
                enr.decode_errors += 1;
            }
        }
    }
    Ok(n)
}

fn exit_code(st: WaitStatus) -> i32 {
    match st {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 125,
    }
}

pub async fn exec(opts: ExecOptions) -> Result<i32, RunError> {
    let mut sink = JsonLines::open(opts.events.as_deref())?.with_format(opts.format);
    let cfg = SensorConfig {
        ringbuf_bytes: opts.ringbuf_bytes,
        sensitive: opts.sensitive.clone(),
        ..SensorConfig::default()
    };
    let mut sensors = Sensors::load(&cfg)?;
    if !opts.quiet {
        eprintln!(
            "agentmon: {} kernel programs attached in {} ms ({} syscalls absent on this kernel); \
             mode observe; events to {}",
            sensors.attached.len(),
            sensors.load_ms,
            sensors.absent.len(),
            opts.events.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdout".into()),
        );
    }

    let held = launch::spawn_held(&opts.cmd)?;
    let pid = held.pid;
    if let Err(e) = sensors.track(pid.as_raw() as u32, EXEC_TASK) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(e.into());
    }
    let mut enr = Enricher::new(opts.sensitive.clone(), HashMap::new());
    enr.procs.seed(
        pid.as_raw() as u32,
        Proc {
            ppid: Some(std::process::id()),
            comm: "agentmon".into(),
            exe: None,
            argv: Some(opts.cmd.clone()),
            task: EXEC_TASK,
            ..Default::default()
        },
    );
    let events = sensors.take_events().expect("ring buffer taken once");
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let launched = held.release();

    let status = match launched {
        Err(e) => {
            // The failed exec is still reported (exec with an error, then exit).
            drain(ring.get_mut(), &mut enr, &mut sink)?;
            sink.flush()?;
            return Err(e.into());
        }
        Ok(_) => {
            let mut waiter = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None));
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
            let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
            let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;
            loop {
                tokio::select! {
                    r = ring.readable_mut() => {
                        let mut guard = r?;
                        drain(guard.get_inner_mut(), &mut enr, &mut sink)?;
                        guard.clear_ready();
                    }
                    // The kernel wakes us only when a batch is waiting (see wakeup_bytes).
                    _ = poll.tick() => {
                        drain(ring.get_mut(), &mut enr, &mut sink)?;
                    }
                    _ = tick.tick() => {
                        sensors.settle_pending()?;
                        if let Some(ev) = enr.loss(&sensors.counts()) {
                            sink.send(&ev)?;
                        }
                        sink.flush()?;
                    }
                    st = &mut waiter => break st.map_err(std::io::Error::other)?,
                    // The command is in our process group for terminal signals; forward
                    // the others so `kill agentmon` stops the command too.
                    _ = sigint.recv() => forward(pid, Signal::SIGINT),
                    _ = sigterm.recv() => forward(pid, Signal::SIGTERM),
                    _ = sighup.recv() => forward(pid, Signal::SIGHUP),
                }
            }
        }
    };
    // The root's exit event is in the ring before waitpid returns; take the rest.
    drain(ring.get_mut(), &mut enr, &mut sink)?;
    if let Some(ev) = enr.loss(&sensors.counts()) {
        sink.send(&ev)?;
    }
    sink.flush()?;
    let survivors: Vec<u32> = sensors.tracked().into_iter().map(|(p, _)| p).collect();
    if !survivors.is_empty() && !opts.quiet {
        eprintln!(
            "agentmon: the command exited but {} of its descendants still run and are no longer \
             observed: {:?}",
            survivors.len(),
            survivors
        );
    }
    Ok(match status {
        Ok(st) => exit_code(st),
        Err(e) => {
            tracing::error!("waitpid: {e}");
            125
        }
    })
}

fn forward(pid: Pid, sig: Signal) {
    let _ = nix::sys::signal::kill(pid, sig);
}
