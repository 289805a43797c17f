//! Prometheus metrics: what agentmon saw and did (counters) and the state it is in
//! (gauges), in the OpenMetrics text format, and a local HTTP endpoint to scrape
//! them ([`serve`]). Every metric is listed in docs/metrics.md.
//!
//! [`Metrics`] is a cheap handle (an `Arc`): the pipeline counts events and alerts
//! through [`MetricsSink`] in the sink fanout, the parts that own a piece of state set
//! its gauge, and [`serve`] encodes on each scrape. Counting an event is one relaxed
//! atomic add: every label value agentmon itself produces has its counter made up
//! front (so its series exists, at 0, from the first scrape), and the event's counter
//! is found without a lock or an allocation.
//!
//! Label values are bounded: a value outside the known set (an event read back from
//! a file, a kernel loss kind) is cleaned to `[A-Za-z0-9_.:-]` and at most
//! [`MAX_EXTRA`] such values get their own series in a metric; later ones are counted
//! as `other`. The library writes label values unescaped, so cleaning also keeps the
//! exposition parseable.

mod http;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

pub use http::{CONTENT_TYPE, bind, serve, serve_on};

use crate::{
    contain::Act,
    event::{Alert, Event, Kind},
    policy::{Severity, VerdictKind},
    sink::{Sink, SinkError},
};

/// Label values outside the known set that one metric gives their own series;
/// further ones are counted as [`OTHER`].
pub const MAX_EXTRA: usize = 64;
/// The label value of everything past [`MAX_EXTRA`].
pub const OTHER: &str = "other";
/// Longest label value kept (in characters); longer ones are cut.
const MAX_VALUE_LEN: usize = 64;

type Count = Counter<u64, AtomicU64>;
type Level = Gauge<i64, AtomicI64>;
/// One label: the metric's label name and the value.
type Labels = [(&'static str, Cow<'static, str>); 1];

/// Verdicts the policy gives (`verdict` of an event).
const VERDICTS: [VerdictKind; 5] = [
    VerdictKind::InScope,
    VerdictKind::NeedsApproval,
    VerdictKind::OutOfScope,
    VerdictKind::Violation,
    VerdictKind::Denied,
];
/// What an `action` event reports agentmon did.
const ACTIONS: [Act; 5] = [Act::Kill, Act::Freeze, Act::Thaw, Act::Revoke, Act::Pause];
/// Alert severities.
const SEVERITIES: [Severity; 5] =
    [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

/// agentmon's metrics. Clones share the counters.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    events: Labeled,
    lost: Labeled,
    verdicts: Labeled,
    actions: Labeled,
    alerts: Labeled,
    spool_bytes: Level,
    spool_dropped: Count,
    nats_connected: Level,
    nats_published: Count,
    probes_attached: Level,
    tasks: Level,
    tracked_processes: Level,
    approvals_pending: Level,
    network_guards: Level,
    network_allow_entries: Level,
    /// When the handle was made, and the event loop's last beat (ms after it).
    born: std::time::Instant,
    beat_ms: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        // Counters are registered without `_total`: the encoder appends it. The
        // encoder also ends each help text with a full stop.
        let events = Labeled::register(
            &mut r,
            "agentmon_events",
            "Events written, by event kind",
            "kind",
            Kind::ALL.iter().map(|k| k.as_str()),
        );
        let lost = Labeled::register(
            &mut r,
            "agentmon_kernel_events_lost",
            "Events the kernel sensors could not hand over (ring buffer full), by kernel event kind",
            "kind",
            [],
        );
        let verdicts = Labeled::register(
            &mut r,
            "agentmon_verdicts",
            "Policy verdicts on events",
            "verdict",
            VERDICTS.map(VerdictKind::as_str),
        );
        let actions = Labeled::register(
            &mut r,
            "agentmon_actions",
            "Actions agentmon took on tasks (kill, freeze, thaw, revoke), attempted or done",
            "action",
            ACTIONS.map(Act::as_str),
        );
        let alerts = Labeled::register(
            &mut r,
            "agentmon_alerts",
            "Alerts raised, by severity",
            "severity",
            SEVERITIES.map(Severity::as_str),
        );
        // The build, as Prometheus exporters say theirs: a constant 1, the version
        // in its label.
        let build = Family::<[(&'static str, &'static str); 1], Level>::default();
        build.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        r.register("agentmon_build_info", "agentmon's build (the value is 1)", build);
        let spool_bytes = Level::default();
        r.register_with_unit(
            "agentmon_spool",
            "Size of the NATS spool of events not yet delivered",
            Unit::Bytes,
            spool_bytes.clone(),
        );
        Metrics(Arc::new(Inner {
            events,
            lost,
            verdicts,
            actions,
            alerts,
            spool_bytes,
            spool_dropped: counter(
                &mut r,
                "agentmon_spool_dropped",
                "Events dropped because the NATS spool was full",
            ),
            nats_connected: gauge(&mut r, "agentmon_nats_connected", "1 while connected to NATS, else 0"),
            nats_published: counter(&mut r, "agentmon_nats_published", "Messages published to NATS"),
            probes_attached: gauge(&mut r, "agentmon_probes_attached", "Kernel programs attached"),
            tasks: gauge(&mut r, "agentmon_tasks", "Tasks being watched"),
            tracked_processes: gauge(
                &mut r,
                "agentmon_tracked_processes",
                "Processes in the process table (tracked process trees)",
            ),
            approvals_pending: gauge(
                &mut r,
                "agentmon_approvals_pending",
                "Held syscalls waiting for an approver",
            ),
            network_guards: gauge(
                &mut r,
                "agentmon_network_guards",
                "Task cgroups with a network guard in the kernel (NET_TASK; 4096 at most), every 10 s",
            ),
            network_allow_entries: gauge(
                &mut r,
                "agentmon_network_allow_entries",
                "Allowed and denied address entries of the guarded tasks (NET_ALLOW; 65536 at most), every 10 s",
            ),
            registry: r,
            born: std::time::Instant::now(),
            beat_ms: AtomicI64::new(0),
        }))
    }

    /// The event loop ran now (every tick): what `/healthz` goes by.
    pub fn beat(&self) {
        self.beat_ago(std::time::Duration::ZERO);
    }

    /// The event loop last ran `ago`.
    pub(crate) fn beat_ago(&self, ago: std::time::Duration) {
        let at = self.0.born.elapsed().as_millis() as i64 - ago.as_millis() as i64;
        self.0.beat_ms.store(at, Relaxed);
    }

    /// How long the event loop has not run (since this handle was made, before its
    /// first beat).
    pub fn still(&self) -> std::time::Duration {
        let now = self.0.born.elapsed().as_millis() as i64;
        std::time::Duration::from_millis(now.saturating_sub(self.0.beat_ms.load(Relaxed)).max(0) as u64)
    }

    /// Counts an event: its kind; its verdict, if it has one; and, for an `action`
    /// event, the action taken. (The `action` of other events is what the policy
    /// asked for, not something done: it is not counted.)
    pub fn event(&self, ev: &Event) {
        let m = &self.0;
        m.events.inc_at(ev.kind as usize, ev.kind.as_str());
        if let Some(v) = &ev.verdict {
            m.verdicts.with(v, inc);
        }
        // (A late kill's record reports on one counted already.)
        if ev.kind == Kind::Action
            && let Some(a) = &ev.action
            && ev.detail.get("by").and_then(|v| v.as_str()) != Some("kill_timeout")
        {
            m.actions.with(a, inc);
        }
    }

    /// Counts an alert by its severity.
    pub fn alert(&self, a: &Alert) {
        self.0.alerts.with(&a.severity, inc);
    }

    /// The kernel's cumulative count of lost events of `kind`. The counter only
    /// rises: a total below the one already set is ignored.
    pub fn set_lost(&self, kind: &str, total: u64) {
        self.0.lost.with(kind, |c| raise(c, total));
    }

    pub fn set_spool_bytes(&self, bytes: u64) {
        self.0.spool_bytes.set(level(bytes));
    }

    /// Events the spool dropped since agentmon started (cumulative; only rises).
    pub fn set_spool_dropped(&self, total: u64) {
        raise(&self.0.spool_dropped, total);
    }

    pub fn set_nats_connected(&self, connected: bool) {
        self.0.nats_connected.set(i64::from(connected));
    }

    /// Messages published to NATS since agentmon started (cumulative; only rises).
    pub fn set_nats_published(&self, total: u64) {
        raise(&self.0.nats_published, total);
    }

    pub fn set_probes_attached(&self, n: usize) {
        self.0.probes_attached.set(level(n));
    }

    pub fn set_tasks(&self, n: usize) {
        self.0.tasks.set(level(n));
    }

    pub fn set_tracked_processes(&self, n: usize) {
        self.0.tracked_processes.set(level(n));
    }

    pub fn set_approvals_pending(&self, n: usize) {
        self.0.approvals_pending.set(level(n));
    }

    pub fn set_network_guards(&self, guards: usize, allow_entries: usize) {
        self.0.network_guards.set(level(guards));
        self.0.network_allow_entries.set(level(allow_entries));
    }

    /// Every metric in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail, nor can encoding i64 and u64 values.
        if let Err(e) = text::encode(&mut out, &self.0.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

/// A sink that counts what passes through the fanout into [`Metrics`].
pub struct MetricsSink(pub Metrics);

impl Sink for MetricsSink {
    fn name(&self) -> String {
        "metrics".into()
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.0.event(ev);
        Ok(())
    }

    fn alert(&mut self, a: &Alert) -> Result<(), SinkError> {
        self.0.alert(a);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A counter family with one label, whose known values have their counters at hand.
struct Labeled {
    key: &'static str,
    family: Family<Labels, Count>,
    /// The known values and their counters (shared with the family), in order.
    known: Vec<(&'static str, Count)>,
    /// Values outside `known` given a series so far (bounded by [`MAX_EXTRA`]).
    extra: AtomicUsize,
}

impl Labeled {
    fn register(
        r: &mut Registry,
        name: &str,
        help: &str,
        key: &'static str,
        known: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        let family = Family::<Labels, Count>::default();
        let known =
            known.into_iter().map(|v| (v, family.get_or_create_owned(&[(key, Cow::Borrowed(v))]))).collect();
        r.register(name, help, family.clone());
        Labeled { key, family, known, extra: AtomicUsize::new(0) }
    }

    /// Counts `value`, expected at index `i` of the known values.
    fn inc_at(&self, i: usize, value: &str) {
        match self.known.get(i) {
            Some((k, c)) if *k == value => inc(c),
            _ => self.with(value, inc),
        }
    }

    /// Calls `f` with the counter of `value`.
    fn with(&self, value: &str, f: impl FnOnce(&Count)) {
        match self.known.iter().find(|(k, _)| *k == value) {
            Some((_, c)) => f(c),
            None => self.with_extra(value, f),
        }
    }

    #[cold]
    fn with_extra(&self, value: &str, f: impl FnOnce(&Count)) {
        let labels: Labels = [(self.key, Cow::Owned(clean(value)))];
        if let Some(c) = self.family.get(&labels) {
            return f(&c);
        }
        // Two threads adding the same new value at once count it twice: harmless.
        let labels = if self.extra.fetch_add(1, Relaxed) < MAX_EXTRA {
            labels
        } else {
            [(self.key, Cow::Borrowed(OTHER))]
        };
        f(&self.family.get_or_create(&labels));
    }
}

fn counter(r: &mut Registry, name: &str, help: &str) -> Count {
    let c = Count::default();
    r.register(name, help, c.clone());
    c
}

fn gauge(r: &mut Registry, name: &str, help: &str) -> Level {
    let g = Level::default();
    r.register(name, help, g.clone());
    g
}

fn inc(c: &Count) {
    c.inc();
}

/// Raises a counter to a cumulative total (never lowers it).
fn raise(c: &Count, total: u64) {
    c.inner().fetch_max(total, Relaxed);
}

fn level(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A label value safe to write unescaped: `[A-Za-z0-9_.:-]`, at most
/// [`MAX_VALUE_LEN`] characters, never empty.
fn clean(v: &str) -> String {
    let s: String = v
        .chars()
        .take(MAX_VALUE_LEN)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') { c } else { '_' })
        .collect();
    if s.is_empty() { "unknown".into() } else { s }
}
