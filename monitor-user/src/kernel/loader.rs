//! Loads and attaches the kernel programs, after probing what this host allows.
//!
//! Order: capabilities (root, BTF, tracefs) -> offsets (BTF, tracepoint formats) ->
//! load the object with `CONFIG` set -> verify and attach each program. Any failure
//! names what failed and how to fix it; nothing is attached half-way silently.

use std::{collections::BTreeMap, time::Instant};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{
        Program, ProgramError,
        fexit::FExitLink,
        links::{FdLink, PinnedLink},
        tp_btf::BtfTracePointLink,
        trace_point::TracePointLink,
    },
};
use monitor_common::{KConfig, NetKeyData, NetPorts, Tracked, lsm::FsKey};

use super::{
    btf::{BtfError, KernelBtf},
    tracefs::{TraceFs, TraceFsError},
};
use super::{
    lsm::LsmMaps,
    observe::{Chosen, Tier},
    pin::Pins,
};
use crate::sensitive::SensitiveSet;

mod fexit;
mod hooks;
mod maps;
mod par;
mod rawtp;
pub use hooks::Armed;
pub use maps::{Drops, GuardEntries};
use rawtp::{BTF_TPS, IOU_TPS};

/// The kernel programs, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "agentmon must run as root to load kernel programs (needs CAP_BPF, CAP_PERFMON and \
         CAP_SYS_ADMIN); run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    TraceFs(#[from] TraceFsError),
    #[error("tracepoint {tp} passes {found} arguments on this kernel, program {prog} expects {want}")]
    TpProto { prog: String, tp: String, found: usize, want: usize },
    #[error("cannot load the kernel object: {0}")]
    Object(String),
    #[error("kernel program {prog} ({attach}) failed to {stage}: {msg}")]
    Program { prog: String, attach: String, stage: &'static str, msg: String },
    #[error("kernel map {0} missing from the object")]
    Map(&'static str),
    #[error("kernel map {name}: {msg}")]
    MapOp { name: &'static str, msg: String },
    #[error("{0}")]
    Observe(String),
}

/// Options of the sensors.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    pub ringbuf_bytes: u32,
    /// Processes that can be tracked at once (TRACKED's size). A fork past it is
    /// counted lost; on the BPF LSM tier the child is still held by its cgroup.
    pub max_tracked: u32,
    /// Bytes waiting in the ring before the kernel wakes the reader (it also polls).
    pub wakeup_bytes: u32,
    pub sensitive: SensitiveSet,
    /// agentmon's private keys: a tracked open of one to read is reported by the
    /// file's identity, whatever name or mount it was opened by.
    pub secrets: Vec<std::path::PathBuf>,
    /// Load and attach the BPF LSM tier (`enforce::Layers::lsm`).
    pub lsm: bool,
    /// A daemon's state directory: its maps and links are pinned in bpffs under a
    /// name of it, and a previous daemon's are taken over (`kernel::pin`).
    pub pin: Option<std::path::PathBuf>,
    /// `auto` may choose the fexit tier (`kernel::observe`): a daemon attaches once;
    /// `agentmon exec` attaches for one command, and a trampoline per syscall takes
    /// longer to set up and tear down than the tracepoints (`auto` keeps those).
    pub fexit_auto: bool,
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            ringbuf_bytes: 16 << 20,
            max_tracked: 65536,
            wakeup_bytes: 64 << 10,
            sensitive: SensitiveSet::default_set(),
            secrets: Vec::new(),
            lsm: false,
            pin: None,
            fexit_auto: true,
        }
    }
}

/// How often the reader polls the ring buffer between wakeups (bounds event latency).
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Entries of TRACKED_BYTES for this host's pid_max (64 pids per entry).
fn tracked_bytes_entries() -> u32 {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 << 20);
    pid_max.div_ceil(64).max(1)
}

/// A number for this load of the programs (`KConfig::epoch`), never 0.
fn new_epoch() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b).max(1)
}

/// What makes pinned maps fit a load: the programs, their configuration (but not
/// who loads them, nor the epoch) and the maps' sizes.
fn build_print(k: &KConfig, cfg: &SensorConfig, tracked_entries: u32) -> Vec<u8> {
    let k = KConfig { self_tgid: 0, epoch: 0, ..*k };
    let mut b = OBJECT.to_vec();
    b.extend(
        format!("{k:?} {} {} {tracked_entries} {}", cfg.ringbuf_bytes, cfg.max_tracked, cfg.lsm).bytes(),
    );
    b
}

/// Loaded, attached sensors and the maps userspace works with.
pub struct Sensors {
    // Links before the object: they are dropped first, in parallel (see Drop).
    tp_links: Vec<TracePointLink>,
    fx_links: Vec<FExitLink>,
    /// The fexit tier's tail calls for calls seccomp answered (held: a program
    /// array is emptied when userspace lets go of it, unless pinned).
    #[expect(dead_code, reason = "held")]
    skipped: Option<ProgramArray<MapData>>,
    btf_links: Vec<BtfTracePointLink>,
    /// The network guards of enforced tasks' cgroups (when not pinned).
    guard_links: Vec<FdLink>,
    /// The BPF LSM hooks, attached while a task is enforced on that tier.
    hooks: hooks::Hooks,
    /// A daemon's links, pinned: they stay attached when it goes.
    pinned: Vec<PinnedLink>,
    pins: Option<Pins>,
    /// Why a daemon's state could not be pinned (it runs unpinned).
    pub pin_error: Option<String>,
    ebpf: Ebpf,
    net_task: HashMap<MapData, u64, u32>,
    net_allow: LpmTrie<MapData, NetKeyData, NetPorts>,
    net_drops: PerCpuHashMap<MapData, u64, u64>,
    /// The drop totals already reported, by cgroup.
    drops_said: BTreeMap<u64, u64>,
    /// NET_ALLOW was swept once of entries no guard names.
    allow_swept: bool,
    tracked: HashMap<MapData, u32, Tracked>,
    tracked_bytes: Array<MapData, [u8; 64]>,
    pending: Array<MapData, u64>,
    /// Roots inserted by userspace that the kernel has not marked yet.
    unmarked: Vec<u32>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// The BPF LSM tier's maps, when it is loaded.
    pub lsm: Option<LsmMaps>,
    /// Attached programs: name -> tracepoint.
    pub attached: BTreeMap<String, String>,
    /// Programs not attached because their syscall does not exist on this kernel.
    pub absent: Vec<String>,
    /// The programs that see syscalls return (`kernel::observe`).
    pub observe: Chosen,
    /// Whether io_uring requests are recorded with the paths they name (the
    /// iouring.rs tp_btf programs attached), or why they are by opcode only.
    pub iou_paths: Result<(), String>,
    pub load_ms: u128,
}

/// Per-kind emitted and lost totals, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub emitted: BTreeMap<u16, u64>,
    pub lost: BTreeMap<u16, u64>,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Mounts tracefs if it is missing (root only).
fn ensure_tracefs() -> Result<TraceFs, LoadError> {
    if let Ok(t) = TraceFs::open() {
        return Ok(t);
    }
    let target = "/sys/kernel/tracing";
    let r =
        nix::mount::mount(Some("nodev"), target, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>);
    if r.is_ok() {
        tracing::info!("mounted tracefs at {target}");
    }
    Ok(TraceFs::open()?)
}

fn verifier_tail(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                return io_error.to_string();
            }
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}; verifier log tail:\n  {}", tail.join("\n  "))
        }
        other => other.to_string(),
    }
}

impl Sensors {
    /// Probes the host, loads every program and attaches it.
    pub fn load(cfg: &SensorConfig) -> Result<Self, LoadError> {
        let started = Instant::now();
        if !is_root() {
            return Err(LoadError::NotRoot);
        }
        let kbtf = KernelBtf::load()?;
        let tracefs = ensure_tracefs()?;
        let rawtp::Fits { fits: btf_fits, iou, mut iou_paths } = rawtp::fits(&kbtf)?;
        let epoch_no = new_epoch();
        let kconfig = KConfig {
            self_tgid: std::process::id(),
            sensitive_prefix_lens: cfg.sensitive.prefix_lens,
            wakeup_bytes: cfg.wakeup_bytes,
            epoch: epoch_no,
            lsm: cfg.lsm as u32,
            // (fexit is never chosen there: the syscall tracepoints observe.)
            witness: super::preempt::preempts().is_some() as u32,
            sensitive_bloom: cfg.sensitive.bloom(),
            off: kbtf.offsets()?,
            tp: tracefs.tp_offsets()?,
            iou,
        };
        let tracked_entries = tracked_bytes_entries();
        // Without pins the daemon still runs, saying what a restart will lose.
        let (pins, pin_error) = match cfg
            .pin
            .as_ref()
            .map(|state| Pins::open(state, &build_print(&kconfig, cfg, tracked_entries), epoch_no))
        {
            Some(Ok(p)) => (Some(p), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global("CONFIG", &kconfig, true)
            .map_max_entries("EVENTS", cfg.ringbuf_bytes)
            .map_max_entries("TRACKED", cfg.max_tracked)
            .map_max_entries("TRACKED_BYTES", tracked_entries)
            // LSM_STATE (task local storage: the BPF LSM hooks' check state, per
            // thread), a map type aya does not wrap; only the kernel programs use it.
            .allow_unsupported_maps();
        if let Some(p) = &pins {
            for m in super::pin::PINNED_MAPS {
                loader.map_pin_path(m, p.map(m));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| LoadError::Object(e.to_string()))?;
        // Allowing map types aya does not wrap is for LSM_STATE alone: another would
        // load unchecked.
        if let Some((name, _)) =
            ebpf.maps().find(|(n, m)| matches!(m, aya::maps::Map::Unsupported(_)) && *n != "LSM_STATE")
        {
            return Err(LoadError::Object(format!("map {name} is of a type aya does not wrap")));
        }
        let pin = |name: &str, link: FdLink| -> Result<Option<PinnedLink>, LoadError> {
            match &pins {
                Some(p) => link.pin(p.link(name)).map(Some).map_err(|e| LoadError::Program {
                    prog: name.to_string(),
                    attach: "bpffs".into(),
                    stage: "pin",
                    msg: e.to_string(),
                }),
                None => Ok(None),
            }
        };
        let mut pinned = Vec::new();

        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Object(format!("kernel BTF: {e}")))?;
        let skipped_pin = pins.as_ref().map(|p| p.link("SKIPPED"));
        let (observe, fx) =
            fexit::choose(&mut ebpf, &btf, &kbtf, &tracefs, skipped_pin.as_deref(), cfg.fexit_auto)?;
        let fexit::Fexit { links: fx_attached, loaded: fx_loaded, absent: fx_absent, skipped } = fx;
        let mut attached = BTreeMap::new();
        let mut tp_links = Vec::new();
        let mut fx_links = Vec::new();
        let mut btf_links = Vec::new();
        let (mut lsm_hooks, mut lsm_always) = (Vec::new(), Vec::new());
        let mut absent = fx_absent;
        for (name, link, attach) in fx_attached {
            if pins.is_some() {
                pinned.extend(pin(&name, link.into())?);
            } else {
                fx_links.push(link);
            }
            attached.insert(name, attach);
        }
        attached.extend(fx_loaded);
        let wanted = par::Wanted {
            tier: observe.tier,
            lsm: cfg.lsm,
            kbtf: &kbtf,
            tracefs: &tracefs,
            fits: &btf_fits,
            iou_paths: iou_paths.is_ok(),
        };
        wanted.preload(&mut ebpf, &btf);
        for (name, prog) in ebpf.programs_mut() {
            let name = name.to_string();
            let t0 = Instant::now();
            let fail = |attach: &str, stage: &'static str, msg: String| LoadError::Program {
                prog: name.clone(),
                attach: attach.to_string(),
                stage,
                msg,
            };
            match prog {
                Program::TracePoint(tp) => {
                    let category = if name.starts_with("sys_") { "syscalls" } else { "io_uring" };
                    if category == "syscalls" && observe.tier == Tier::Fexit {
                        continue;
                    }
                    let attach = format!("tracepoint {category}:{name}");
                    let check = if category == "syscalls" {
                        tracefs.check_syscall(&name)
                    } else {
                        tracefs.format(category, &name).map(drop)
                    };
                    match check {
                        Ok(()) => {}
                        Err(TraceFsError::Missing(..)) => {
                            // Not on this kernel (a newer syscall, the other name of
                            // an io_uring tracepoint): nothing to miss.
                            absent.push(name.clone());
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if tp.fd().is_err() {
                        tp.load().map_err(|e| fail(&attach, "load", verifier_tail(&e)))?;
                    }
                    let id =
                        tp.attach(category, &name).map_err(|e| fail(&attach, "attach", e.to_string()))?;
                    let link = tp.take_link(id).map_err(|e| fail(&attach, "own link", e.to_string()))?;
                    if pins.is_some() {
                        let fd = FdLink::try_from(link).map_err(|e| fail(&attach, "pin", e.to_string()))?;
                        pinned.extend(pin(&name, fd)?);
                    } else {
                        tp_links.push(link);
                    }
                    attached.insert(name.clone(), attach);
                    tracing::debug!(prog = %name, ms = t0.elapsed().as_millis() as u64, "attached");
                }
                // Loaded, or not used, by fexit::choose.
                Program::FExit(_) => {}
                Program::CgroupSockAddr(p) => {
                    // The network guard: loaded now, attached to each enforced task's cgroup.
                    let attach = format!("cgroup_sock_addr {name} (per enforced task)");
                    if p.fd().is_err() {
                        p.load().map_err(|e| fail(&attach, "load", verifier_tail(&e)))?;
                    }
                    attached.insert(name.clone(), attach);
                }
                Program::CgroupSkb(p) => {
                    // The guard's packet check, attached with it.
                    let attach = format!("cgroup_skb {name} (per enforced task)");
                    if p.fd().is_err() {
                        p.load().map_err(|e| fail(&attach, "load", verifier_tail(&e)))?;
                    }
                    attached.insert(name.clone(), attach);
                }
                Program::BtfTracePoint(tp) => {
                    let Some((_, tpname, _)) = BTF_TPS.iter().find(|(p, _, _)| *p == name) else {
                        return Err(fail("tp_btf", "classify", "not in BTF_TPS".into()));
                    };
                    // After every syscall tracepoint (below).
                    if name == rawtp::WITNESS {
                        continue;
                    }
                    let iou_prog = IOU_TPS.contains(&name.as_str());
                    if !btf_fits[name.as_str()] {
                        // The other form of this tracepoint is the one for this kernel.
                        if iou_prog {
                            absent.push(name.clone());
                        }
                        continue;
                    }
                    if iou_prog && iou_paths.is_err() {
                        continue;
                    }
                    let attach = format!("tp_btf {tpname}");
                    let loaded = match tp.fd() {
                        Ok(_) => Ok(()),
                        Err(_) => tp.load(tpname, &btf),
                    };
                    let link = loaded
                        .map_err(|e| fail(&attach, "load", verifier_tail(&e)))
                        .and_then(|()| tp.attach().map_err(|e| fail(&attach, "attach", e.to_string())))
                        .and_then(|id| {
                            tp.take_link(id).map_err(|e| fail(&attach, "own link", e.to_string()))
                        });
                    let link = match link {
                        Ok(link) => link,
                        // Without it io_uring requests are still reported, by opcode.
                        Err(e) if iou_prog => {
                            iou_paths = Err(format!("by opcode only: {e}"));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if pins.is_some() {
                        pinned.extend(pin(&name, link.into())?);
                    } else {
                        btf_links.push(link);
                    }
                    attached.insert(name.clone(), attach);
                }
                Program::Lsm(p) => {
                    if !cfg.lsm {
                        continue;
                    }
                    let attach = format!("lsm {name}");
                    if !super::lsm::HOOKS.contains(&name.as_str()) {
                        return Err(fail(&attach, "classify", "not in kernel::lsm::HOOKS".into()));
                    }
                    if !kbtf.has_lsm_hook(&name) {
                        if !super::lsm::OPTIONAL_HOOKS.contains(&name.as_str()) {
                            return Err(fail(
                                &attach,
                                "find",
                                "this kernel has no such LSM hook (built without CONFIG_SECURITY_PATH?): the BPF \
                                 LSM tier cannot hold a scope here; set AGENTMON_ENFORCE_TIER=fallback"
                                    .into(),
                            ));
                        }
                        absent.push(name.clone());
                        continue;
                    }
                    if p.fd().is_err() {
                        p.load(&name, &btf).map_err(|e| fail(&attach, "load", verifier_tail(&e)))?;
                    }
                    // Attached while a task is enforced on the tier, or (the
                    // truncate hooks) below (hooks.rs).
                    if hooks::ALWAYS.contains(&name.as_str()) {
                        lsm_always.push(name.clone());
                        attached.insert(name.clone(), attach);
                    } else {
                        lsm_hooks.push(name.clone());
                        attached.insert(name.clone(), format!("{attach} (while a task is enforced)"));
                    }
                }
                other => {
                    return Err(fail(
                        "?",
                        "classify",
                        format!("unexpected program type {:?}", other.prog_type()),
                    ));
                }
            }
        }

        let always = hooks::attach_all(&mut ebpf, &lsm_always, pins.as_ref())?;
        // The syscall tracepoints' witness, attached after them so that its probe on
        // sys_exit runs after theirs (see monitor-ebpf witness.rs).
        if kconfig.witness != 0 {
            let syscalls: Vec<String> =
                attached.keys().filter(|n| n.starts_with("sys_exit_")).cloned().collect();
            let link = rawtp::attach_witness(&mut ebpf, &btf, &syscalls)?;
            if pins.is_some() {
                pinned.extend(pin(rawtp::WITNESS, link.into())?);
            } else {
                btf_links.push(link);
            }
            attached.insert(rawtp::WITNESS.to_string(), "tp_btf sys_exit".to_string());
        }
        // The map calls below are made with the programs attached (on a daemon's
        // restart, tracked processes run): held like the running Sensors' (see
        // kernel::preempt::Hold), so none hides their syscalls.
        let rt = super::preempt::hold();
        let mut sensitive: HashMap<MapData, u64, u8> = take_map(&mut ebpf, "SENSITIVE")?;
        for h in &cfg.sensitive.hashes {
            sensitive
                .insert(h, &1, 0)
                .map_err(|e| LoadError::MapOp { name: "SENSITIVE", msg: e.to_string() })?;
        }
        let mut secrets: HashMap<MapData, FsKey, u8> = take_map(&mut ebpf, "SECRETS")?;
        for p in &cfg.secrets {
            // A key that cannot be identified is still reported by its path.
            match super::ident::of(p) {
                Ok(k) => secrets
                    .insert(&k, &1, 0)
                    .map_err(|e| LoadError::MapOp { name: "SECRETS", msg: e.to_string() })?,
                Err(e) => tracing::warn!(
                    "{}: reads of it by another name (a hard link, a bind mount) go unseen: {e}",
                    p.display()
                ),
            }
        }
        let tracked: HashMap<MapData, u32, Tracked> = take_map(&mut ebpf, "TRACKED")?;
        let tracked_bytes: Array<MapData, [u8; 64]> = take_map(&mut ebpf, "TRACKED_BYTES")?;
        // Taken over: processes a previous daemon tracked that the kernel has not
        // marked yet are confirmed against TRACKED, as its own pending roots were.
        let unmarked: Vec<u32> = if pins.as_ref().is_some_and(|p| p.reused) {
            tracked
                .keys()
                .filter_map(|k| k.ok())
                .filter(|t| tracked_bytes.get(&(t / 64), 0).is_ok_and(|v| v[(t % 64) as usize] == 0))
                .collect()
        } else {
            Vec::new()
        };
        let mut epoch: Array<MapData, u32> = take_map(&mut ebpf, "EPOCH")?;
        // Every program is attached: the ring is this load's from now on (a previous
        // daemon's programs, still attached, fall silent).
        epoch.set(0, &epoch_no, 0).map_err(|e| LoadError::MapOp { name: "EPOCH", msg: e.to_string() })?;
        let pending = take_map(&mut ebpf, "PENDING")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let events = Some(take_map(&mut ebpf, "EVENTS")?);
        let net_task = take_map(&mut ebpf, "NET_TASK")?;
        let net_allow = take_map(&mut ebpf, "NET_ALLOW")?;
        let net_drops = take_map(&mut ebpf, "NET_DROPS")?;
        let hooks = hooks::Hooks::new(lsm_hooks, always);
        let lsm = if cfg.lsm {
            let mut pats: Array<MapData, monitor_common::lsm::SensPattern> = take_map(&mut ebpf, "SENS_PAT")?;
            let exact = cfg.sensitive.exact().map_err(|e| e.to_string());
            for (i, p) in exact.iter().flatten().enumerate() {
                pats.set(i as u32, p, 0)
                    .map_err(|e| LoadError::MapOp { name: "SENS_PAT", msg: e.to_string() })?;
            }
            Some(LsmMaps {
                sensitive_exact: exact.map(drop),
                fs_rules: take_map(&mut ebpf, "FS_RULES")?,
                tasks: take_map(&mut ebpf, "LSM_TASK")?,
                exec_ok: take_map(&mut ebpf, "EXEC_OK")?,
                ident: std::sync::Arc::new(std::sync::Mutex::new(take_map(&mut ebpf, "IDENT")?)),
                armed: hooks.armed.clone(),
                written: Default::default(),
                own: Default::default(),
                lent: Default::default(),
            })
        } else {
            None
        };
        let mut s = Self {
            tp_links,
            fx_links,
            skipped,
            btf_links,
            guard_links: Vec::new(),
            hooks,
            pinned,
            pins,
            pin_error,
            ebpf,
            net_task,
            net_allow,
            net_drops,
            drops_said: BTreeMap::new(),
            allow_swept: false,
            tracked,
            tracked_bytes,
            pending,
            unmarked,
            counters,
            events,
            lsm,
            attached,
            absent,
            observe,
            iou_paths,
            load_ms: started.elapsed().as_millis(),
        };
        s.set_pending()?;
        let enrolled = s.lsm.as_ref().is_some_and(|l| l.enrolled());
        drop(rt);
        // A previous daemon's enforced tasks: held by its hooks until they are
        // retired, by these from now on.
        if enrolled {
            s.arm_lsm()?;
        }
        Ok(s)
    }
}

impl Sensors {
    /// What the banners and `agentmon probe` say of io_uring requests.
    pub fn iou_said(&self) -> String {
        match &self.iou_paths {
            Ok(()) => "recorded with the paths they name (open, unlink, rename, mkdir, symlink, link), as \
                       submitted, and judged so; an open of agentmon's keys or /proc files, as it completed"
                .into(),
            Err(why) => why.clone(),
        }
    }
}

impl Drop for Sensors {
    /// Detaching waits for grace periods, one after another (kernel::detach): a
    /// child detaches them after agentmon has gone. Without it (the fork failed)
    /// they are detached here, concurrently, where some of the waits overlap.
    fn drop(&mut self) {
        if super::detach::hand_off() {
            return;
        }
        let tps = std::mem::take(&mut self.tp_links);
        let fxs = std::mem::take(&mut self.fx_links);
        let btfs = std::mem::take(&mut self.btf_links);
        // Pinned links detach here only if they were unpinned (see `unpin`).
        let pinned = std::mem::take(&mut self.pinned);
        std::thread::scope(|s| {
            for chunk in chunks(tps, 24) {
                s.spawn(move || drop(chunk));
            }
            for chunk in chunks(pinned, 24) {
                s.spawn(move || drop(chunk));
            }
            for chunk in chunks(fxs, 24) {
                s.spawn(move || drop(chunk));
            }
            s.spawn(move || drop(btfs));
        });
    }
}

fn chunks<T>(v: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let per = v.len().div_ceil(n.max(1)).max(1);
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for x in v {
        cur.push(x);
        if cur.len() == per {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map>,
    T::Error: std::fmt::Display,
{
    let m = ebpf.take_map(name).ok_or(LoadError::Map(name))?;
    T::try_from(m).map_err(|e| LoadError::MapOp { name, msg: e.to_string() })
}
