//! `agentmon daemon`: one agentmon per host. It loads the kernel programs once and
//! serves every task: `agentmon exec` registers its command with it, operators
//! attach running trees, and tasks inside tasks delegate to it as they would to an
//! embedded agentmon. SIGTERM or SIGINT: every open task's end is recorded, the
//! outputs are flushed and closed, and the programs detached.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use super::{
    EXEC_TASK, Outputs, RulesChoice, RunError, control, load_rules,
    pipeline::Pipeline,
    reload,
    tasks::{self, Host},
};
use crate::{
    contain::Containment,
    ctl,
    enforce::Layers,
    enrich::Enricher,
    judge::{Judge, RulesWatch},
    kernel::loader::{POLL_INTERVAL, SensorConfig, Sensors},
    metrics::{Metrics, MetricsSink},
    sensitive::SensitiveSet,
    sink::{Format, JsonLines, Sink},
};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub socket: PathBuf,
    pub events: Option<PathBuf>,
    pub format: Format,
    pub sensitive: SensitiveSet,
    pub ringbuf_bytes: u32,
    pub rules: RulesChoice,
    pub outputs: Outputs,
    /// The configuration file (protected from tasks like the outputs).
    pub config: Option<PathBuf>,
    /// Where running tasks are recorded for a restart to resume them.
    pub state_dir: PathBuf,
    /// Prometheus endpoint.
    pub metrics: Option<std::net::SocketAddr>,
    /// How long a held call waits for an approver before it is denied.
    pub approval_timeout: Duration,
    /// Kill a task when its expiry passes (else its end is only recorded).
    pub kill_on_expiry: bool,
    /// Processes attached automatically under the default task.
    pub selectors: Option<super::select::Selectors>,
}

pub async fn daemon(opts: DaemonOptions) -> Result<i32, RunError> {
    let rules = load_rules(&opts.rules)?;
    let layers = Layers::probe();
    eprintln!("agentmon daemon: enforcement layers on this host:");
    for l in layers.describe() {
        eprintln!("  {l}");
    }
    for o in opts.outputs.describe() {
        eprintln!("agentmon daemon: output: {o}");
    }
    let (mut sink, nats) =
        opts.outputs.open(JsonLines::open(opts.events.as_deref())?.with_format(opts.format))?;
    let metrics = match opts.metrics {
        Some(addr) => {
            let m = Metrics::new();
            let listener = crate::metrics::bind(addr, false).await?;
            eprintln!("agentmon daemon: metrics on http://{addr}/metrics");
            tokio::spawn(crate::metrics::serve_on(listener, m.clone()));
            sink.push(Box::new(MetricsSink(m.clone())));
            Some(m)
        }
        None => None,
    };
    let cfg = SensorConfig {
        ringbuf_bytes: opts.ringbuf_bytes,
        sensitive: opts.sensitive.clone(),
        ..SensorConfig::default()
    };
    let mut sensors = Sensors::load(&cfg)?;
    let server = ctl::Server::bind_at(&opts.socket)?;
    if let (Some(n), Some(keys)) = (&opts.outputs.nats, &opts.outputs.ctl_keys) {
        crate::nats::control::start(n.args.clone(), n.host.clone(), keys.clone(), server.path.clone())?;
    }
    let mut protected = opts.outputs.protected();
    protected.extend(opts.events.iter().cloned());
    protected.extend(opts.config.iter().cloned());
    if let RulesChoice::Dir(d) = &opts.rules {
        protected.push(d.clone());
    }
    protected.extend(std::env::current_exe().ok());
    protected.push(opts.state_dir.clone());
    let host = Host {
        layers,
        protected,
        state_dir: opts.state_dir.clone(),
        approval_timeout: opts.approval_timeout,
    };
    eprintln!(
        "agentmon daemon: {} kernel programs attached in {} ms; {} rules; control socket {}",
        sensors.attached.len(),
        sensors.load_ms,
        rules.as_ref().map(|r| r.len()).unwrap_or(0),
        server.path.display()
    );
    let mut judge = Judge::new(rules);
    judge.set_own_socket(&server.path);
    let mut p = Pipeline {
        enr: Enricher::new(opts.sensitive.clone(), HashMap::new()),
        judge,
        contain: Containment::default(),
        gates: Vec::new(),
        ended: Default::default(),
        steps: Default::default(),
    };
    let mut watch = match &opts.rules {
        RulesChoice::Dir(d) => Some(RulesWatch::new(d)),
        _ => None,
    };
    let events = sensors.take_events().expect("ring buffer taken once");
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut next_task = EXEC_TASK;
    let cx = control::Ctl {
        sensors: &mut sensors,
        p: &mut p,
        sink: &mut sink,
        next: &mut next_task,
        host: Some(&host),
    };
    let resumed = tasks::resume(cx, &host);
    if !resumed.is_empty() {
        eprintln!("agentmon daemon: resumed {} running tasks: {}", resumed.len(), resumed.join(", "));
    }
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut scanner = super::select::Scanner::default();
    let mut scan = tokio::time::interval(Duration::from_millis(250));
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut requests = control::Reader::default();
    let mut marked = std::collections::HashSet::new();
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            r = ring.readable_mut() => {
                let mut guard = r?;
                p.drain(guard.get_inner_mut(), &mut sink, &mut sensors)?;
                guard.clear_ready();
            }
            _ = poll.tick() => p.drain(ring.get_mut(), &mut sink, &mut sensors)?,
            _ = tick.tick() => {
                sensors.settle_pending()?;
                if let Some(ev) = p.enr.loss(&sensors.counts()) {
                    sink.send(&ev)?;
                }
                if let Some(w) = watch.as_mut() {
                    reload(w, &mut p.judge);
                }
                for ev in p.expire(&mut sensors, opts.kill_on_expiry) {
                    sink.send(&ev)?;
                }
                // Each ended task's record is rewritten once, not every tick.
                for id in p.ended.iter().filter(|id| !marked.contains(*id)) {
                    host.mark_ended(id);
                }
                forget_finished(&mut p, &mut sink, &sensors, &host)?;
                marked.clone_from(&p.ended);
                if let Some(m) = &metrics {
                    report(m, &p, &sensors, nats.as_ref());
                }
                sink.flush()?;
            }
            r = super::gate_ready(&p.gates) => {
                r?;
                // Events first: the caller's exec and forks name the process in the request.
                p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
                p.held_calls(&sensors, &mut sink)?;
            }
            _ = super::gate_deadline(&p.gates) => p.expire_approvals(&mut sink)?,
            conn = server.listener.accept() => {
                if let Ok((stream, _)) = conn {
                    requests.read(stream);
                }
            }
            Some(inc) = requests.rx.recv() => {
                // Pending events first: the caller's fork must be in the process table.
                p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
                let cx = control::Ctl {
                    sensors: &mut sensors,
                    p: &mut p,
                    sink: &mut sink,
                    next: &mut next_task,
                    host: Some(&host),
                };
                control::answer(inc, cx);
                sink.batch_end()?;
            }
            _ = scan.tick(), if opts.selectors.is_some() => {
                let Some(sel) = &opts.selectors else { continue };
                // Their forks and execs so far first: a child of a matched process
                // that is already tracked is not a new match.
                p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
                let cx = control::Ctl {
                    sensors: &mut sensors,
                    p: &mut p,
                    sink: &mut sink,
                    next: &mut next_task,
                    host: Some(&host),
                };
                for id in scanner.scan(sel, cx, &host) {
                    tracing::info!("selector: attached task {id}");
                }
                sink.batch_end()?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Running tasks are not ended: they run on unobserved (their Landlock and seccomp
    // limits stay; the cgroup guard goes with the programs) and a restarted daemon
    // resumes them from the state directory.
    let running = p.task_ids().len().saturating_sub(p.ended.len());
    eprintln!(
        "agentmon daemon: stopping; {running} running tasks are not observed until a daemon resumes them \
         (recorded in {})",
        host.state_dir.display()
    );
    p.drain(ring.get_mut(), &mut sink, &mut sensors)?;
    if let Some(ev) = p.enr.loss(&sensors.counts()) {
        sink.send(&ev)?;
    }
    sink.close()?;
    Ok(0)
}

/// The gauges and kernel counters, every tick.
fn report(m: &Metrics, p: &Pipeline, sensors: &Sensors, nats: Option<&super::outputs::NatsHandles>) {
    m.set_probes_attached(sensors.attached.len());
    m.set_tasks(p.task_ids().len().saturating_sub(p.ended.len()));
    m.set_tracked_processes(sensors.tracked().len());
    m.set_approvals_pending(0);
    for (k, n) in sensors.counts().lost {
        m.set_lost(crate::enrich::kind_name(k), n);
    }
    if let Some(n) = nats {
        n.report(m);
    }
}

/// Tasks that ended and have no tracked process left: their per-task outputs are
/// closed and what is kept of them dropped (a daemon runs for months).
fn forget_finished(
    p: &mut Pipeline,
    sink: &mut crate::sink::Fanout,
    sensors: &Sensors,
    host: &Host,
) -> Result<(), RunError> {
    if p.ended.is_empty() {
        return Ok(());
    }
    let tracked = sensors.tracked();
    let done: Vec<Arc<str>> = p
        .ended
        .iter()
        // Its sub-tasks' processes keep it too (they share its cgroup and events file).
        .filter(|id| !p.contain.cookies_under(id).iter().any(|c| tracked.iter().any(|(_, t)| t == c)))
        .cloned()
        .collect();
    for id in done {
        sink.remove_keyed(&id)?;
        host.drop_saved(&id);
        p.forget(&id);
        p.ended.remove(&id);
    }
    Ok(())
}
