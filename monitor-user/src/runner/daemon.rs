//! `agentmon daemon`: one agentmon per host. It loads the kernel programs once and
//! serves every task: `agentmon exec` registers its command with it, operators
//! attach running trees, and tasks inside tasks delegate to it as they would to an
//! embedded agentmon. SIGTERM or SIGINT: the outputs are flushed and closed and the
//! programs detached; running tasks are not ended (a restarted daemon resumes them,
//! and says for how long no daemon watched).

use std::{path::PathBuf, time::Duration};

use super::{
    Outputs, RulesChoice, RunError,
    engine::Engine,
    load_rules, resume, rules_watch,
    runtime::{Extras, Runtime, Signals},
    setup::{OnExpiry, Setup, StateDir},
};
use crate::{
    ctl,
    enforce::Layers,
    metrics::{Metrics, MetricsSink},
    sensitive::SensitiveSet,
    sink::{Format, JsonLines},
};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub socket: PathBuf,
    pub events: Option<PathBuf>,
    pub format: Format,
    pub sensitive: SensitiveSet,
    pub ringbuf_bytes: u32,
    /// Processes tracked at once (default 65,536).
    pub max_tracked: Option<u32>,
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
    /// What prompt records keep.
    pub prompts: crate::prompt::PromptPolicy,
    /// Pause tasks while the ring buffer is filling (`runner::pressure`).
    pub backpressure: bool,
    pub on_expiry: OnExpiry,
    /// How often the host names of tasks' scopes are looked up again.
    pub hosts_refresh: Duration,
    /// How long a delegation waits for its sub-task's host names.
    pub delegation_lookups: Duration,
    /// How long the BPF LSM hooks stay attached once no task is enforced.
    pub lsm_linger: Duration,
    /// Processes attached automatically under the default task.
    pub selectors: Option<super::select::Selectors>,
    /// Keys that may grant tasks (none: any task starts).
    pub grant_keys: Option<Vec<ed25519_dalek::VerifyingKey>>,
    /// Their file (protected like the configuration).
    pub grant_keys_file: Option<PathBuf>,
    /// Tasks without a grant are refused (with grant keys).
    pub require_signed: bool,
}

pub async fn daemon(opts: DaemonOptions) -> Result<i32, RunError> {
    let signals = Signals::catch()?;
    // First: a second daemon on the same state must not touch the first's outputs.
    let state = StateDir { dir: opts.state_dir.clone() };
    let _one = state.lock()?;
    let rules = load_rules(&opts.rules, &opts.sensitive)?;
    let layers = Layers::probe();
    eprintln!("agentmon daemon: enforcement layers on this host:");
    for l in layers.describe() {
        eprintln!("  {l}");
    }
    for o in opts.outputs.describe() {
        eprintln!("agentmon daemon: output: {o}");
    }
    let (mut out, nats) =
        opts.outputs.open(JsonLines::open(opts.events.as_deref())?.with_format(opts.format))?;
    let metrics = match opts.metrics {
        Some(addr) => {
            let m = Metrics::new();
            let listener = crate::metrics::bind(addr, false).await?;
            eprintln!("agentmon daemon: metrics on http://{addr}/metrics");
            tokio::spawn(crate::metrics::serve_on(listener, m.clone()));
            out.push(Box::new(MetricsSink(m.clone())));
            Some(m)
        }
        None => None,
    };
    let mut own = opts.outputs.protected();
    own.extend(opts.events.iter().cloned());
    own.extend(opts.config.iter().cloned());
    own.extend(opts.grant_keys_file.iter().cloned());
    if let RulesChoice::Dir(d) = &opts.rules {
        own.push(d.clone());
    }
    own.push(opts.state_dir.clone());
    own.push(opts.socket.clone());
    let mut setup = Setup::new(layers, own, opts.approval_timeout);
    setup.on_expiry = opts.on_expiry;
    setup.prompts = opts.prompts.clone();
    setup.backpressure = opts.backpressure;
    setup.hosts_refresh = opts.hosts_refresh;
    setup.delegation_lookups = opts.delegation_lookups;
    setup.lsm_linger = opts.lsm_linger;
    setup.state = Some(StateDir { dir: opts.state_dir.clone() });
    setup.grant_keys = opts.grant_keys.clone();
    setup.require_signed = opts.require_signed;
    setup.secrets = opts.outputs.secrets().iter().map(|p| super::setup::canonical(p)).collect();
    match &opts.grant_keys {
        Some(k) if opts.require_signed => {
            eprintln!("agentmon daemon: tasks start only with a grant by one of {} keys", k.len())
        }
        Some(k) => eprintln!(
            "agentmon daemon: grants by one of {} keys are checked; tasks without one start, marked unsigned",
            k.len()
        ),
        None => {}
    }
    let rule_count = rules.as_ref().map(|r| r.len()).unwrap_or(0);
    let engine = Engine::load(opts.ringbuf_bytes, opts.max_tracked, &opts.sensitive, rules, out, setup)?;
    // Room for the descriptors tasks add, so that no start waits for the table to grow.
    super::fdtable::make_room();
    // The socket appears once the daemon can serve (a client that reaches it is answered).
    let server = ctl::Server::bind_at(&opts.socket)?;
    if let (Some(n), Some(keys)) = (&opts.outputs.nats, &opts.outputs.ctl_keys) {
        crate::nats::control::start(n.args.clone(), n.host.clone(), keys.clone(), server.path.clone())?;
    }
    eprintln!(
        "agentmon daemon: {} kernel programs attached in {} ms; {rule_count} rules; control socket {}",
        engine.sensors.attached.len(),
        engine.sensors.load_ms,
        server.path.display()
    );
    eprintln!("agentmon daemon: observation: {}", engine.sensors.observe);
    eprintln!("agentmon daemon: io_uring requests: {}", engine.sensors.iou_said());
    match &engine.sensors.pin_error {
        None => eprintln!(
            "agentmon daemon: kernel state pinned in bpffs: tasks stay tracked and enforced across a restart"
        ),
        Some(e) => eprintln!(
            "agentmon daemon: kernel state NOT pinned ({e}): if this daemon stops, its tasks are neither tracked nor \
             held by the BPF LSM tier until a daemon resumes them"
        ),
    }
    let extras = Extras { selectors: opts.selectors.clone(), metrics, nats, ..Default::default() };
    let mut rt = Runtime::new(engine, server, rules_watch(&opts.rules, &opts.sensitive), extras, signals)?;
    let taken = rt.e.sensors.taken_over();
    let resumed = resume::resume(&mut rt.e);
    if !resumed.is_empty() {
        let how = if taken { "tracked by the kernel throughout" } else { "not observed while no daemon ran" };
        eprintln!("agentmon daemon: resumed {} running tasks ({how}): {}", resumed.len(), resumed.join(", "));
    }
    if taken {
        resume::drop_unclaimed(&mut rt.e);
        // What the tasks did in the gap, their roots' exits included.
        rt.drain();
    }
    resume::end_rootless(&mut rt.e, &resumed);
    // Only now: until the resumed tasks were bound to this daemon's programs, the
    // previous daemon's held them.
    rt.e.sensors.retire_previous();
    rt.run(None).await?;
    // Kills under way first: an operator's `end --kill` ends its task when it is over.
    rt.finish_kills();
    // The records of tasks that ended since the last tick say so before the next
    // daemon reads them (it would take such a task for one still running).
    rt.drain();
    if let Some(st) = &rt.e.setup.state {
        for id in &rt.e.p.ended {
            st.mark_ended(id);
        }
    }
    // Running tasks are not ended: the kernel keeps tracking and enforcing them (the
    // programs and maps stay pinned in bpffs), events wait in the ring, and a
    // restarted daemon resumes them from the state directory.
    // Processes an ended task left behind hold the pins too: unpinned, they would
    // leave the task's scope.
    let running = rt.e.p.task_ids().len().saturating_sub(rt.e.p.ended.len());
    let tracked = rt.e.sensors.tracked().len();
    if running == 0 && tracked == 0 {
        rt.e.sensors.unpin();
        eprintln!(
            "agentmon daemon: stopping; no running task, kernel programs unpinned (detached once it has exited)"
        );
    } else {
        rt.e.sensors.lsm_stopping();
        eprintln!(
            "agentmon daemon: stopping; {running} running tasks ({tracked} processes) stay tracked and enforced in \
             the kernel until a daemon resumes them (recorded in {})",
            opts.state_dir.display()
        );
    }
    rt.shutdown(None);
    Ok(0)
}
