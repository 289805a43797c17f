//! What an agentmon is set up to do, fixed at start: the enforcement layers this
//! host has, the paths no enforced task may reach, how long approvals wait, what
//! expiry does, and (in a daemon) where running tasks are recorded for a restart.

use std::{path::PathBuf, time::Duration};

use crate::{enforce::Layers, event::Timestamp};

/// What happens when a task's expiry passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExpiry {
    /// Its end is recorded (`task_end`, revoke); its processes stay watched and
    /// everything they do after is judged out of scope.
    #[default]
    End,
    /// Its processes are killed, then its end is recorded.
    Kill,
}

pub struct Setup {
    pub layers: Layers,
    /// Files and directories agentmon writes or trusts (canonical): an enforced task's
    /// write or delete scope may never reach them.
    pub protected: Vec<PathBuf>,
    /// How long a held call waits for an approver before it is denied.
    pub approval_timeout: Duration,
    pub on_expiry: OnExpiry,
    /// How often the host names of tasks' scopes are looked up again.
    pub hosts_refresh: Duration,
    /// How long a delegation waits for its sub-task's host names (off the loop).
    pub delegation_lookups: Duration,
    /// A daemon's: top-level tasks may be started and attached over the control
    /// socket, and are recorded here for a restarted daemon to resume.
    pub state: Option<StateDir>,
    /// Keys that may grant tasks (`task::grant`): when set, a top-level task starts
    /// only with a grant by one of them.
    pub grant_keys: Option<Vec<ed25519_dalek::VerifyingKey>>,
    /// With grant keys: a task without a grant is refused (else it starts, marked
    /// unsigned; a grant given is checked either way).
    pub require_signed: bool,
    /// agentmon's private keys (canonical): a task that reads one is tampering.
    pub secrets: Vec<PathBuf>,
    /// What prompt records keep of a prompt.
    pub prompts: crate::prompt::PromptPolicy,
    /// Pause tasks while the ring buffer is filling, rather than lose their events
    /// (`runner::pressure`).
    pub backpressure: bool,
    /// How long the BPF LSM hooks stay attached once no task is enforced on that
    /// tier (kernel::loader::hooks): a start after it pays their attach.
    pub lsm_linger: Duration,
}

/// [`Setup::lsm_linger`] unless configured.
pub const LSM_LINGER: Duration = Duration::from_secs(60);

/// Directories of agentmon's own, whatever the configuration: its control sockets,
/// and the kernel interfaces that would let a task leave its cgroup, unload the
/// sensors or rewrite other processes.
pub const ALWAYS_PROTECTED: &[&str] =
    &[crate::ctl::SOCKET_DIR, "/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel", "/proc"];

impl Setup {
    /// `own`: the files of this configuration (outputs, config, rules, the binary);
    /// each is canonicalised (a scope written through a symlink still reaches it)
    /// and [`ALWAYS_PROTECTED`] is added.
    pub fn new(layers: Layers, own: Vec<PathBuf>, approval_timeout: Duration) -> Self {
        let mut protected: Vec<PathBuf> = ALWAYS_PROTECTED.iter().map(PathBuf::from).collect();
        protected.extend(own);
        protected.extend(std::env::current_exe().ok());
        let mut protected: Vec<PathBuf> = protected.iter().map(|p| canonical(p)).collect();
        protected.sort();
        protected.dedup();
        Self {
            layers,
            protected,
            approval_timeout,
            on_expiry: OnExpiry::End,
            hosts_refresh: Duration::from_secs(60),
            delegation_lookups: super::DELEGATION_LOOKUPS,
            state: None,
            grant_keys: None,
            require_signed: true,
            secrets: Vec::new(),
            prompts: Default::default(),
            backpressure: true,
            lsm_linger: LSM_LINGER,
        }
    }
}

/// `p` absolute (against the working directory) and with symlinks resolved: the
/// whole path when it exists, else its directory (an output not created yet).
pub(crate) fn canonical(p: &std::path::Path) -> PathBuf {
    crate::realpath::canonical_file(p, None).unwrap_or_else(|_| p.to_path_buf())
}

/// Where a daemon records its running tasks, one file each, so that a restarted
/// daemon resumes them; and when it was last alive, so that the gap is reported.
pub struct StateDir {
    pub dir: PathBuf,
}

/// A running task as recorded in the state directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub id: String,
    pub manifest: String,
    pub file: String,
    pub root: u32,
    pub enforce: bool,
    pub events: Option<String>,
    /// Which file `events` is (a restarted daemon opens that file or none).
    #[serde(default)]
    pub events_file: Option<super::tasklog::FileId>,
    pub cgroup: Option<PathBuf>,
    /// The cgroup its root came from (a container's: its container and pod).
    #[serde(default)]
    pub origin_cgroup: Option<String>,
    /// When the task expires (kept absolute: a restart does not extend it).
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// Its end was recorded: a restart does not resume it.
    #[serde(default)]
    pub ended: bool,
    /// The files its command executes (granted again on the BPF LSM tier).
    #[serde(default)]
    pub launch: Vec<String>,
    /// Its cookie in the kernel's maps: kept by a daemon that takes them over.
    #[serde(default)]
    pub cookie: Option<u32>,
    /// The task it was delegated from (a sub-task shares its cgroup and events file).
    #[serde(default)]
    pub parent: Option<String>,
    /// The exec keeping copies of its approval gate and mailbox.
    #[serde(default)]
    pub keeper: Option<super::keeper::Keeper>,
    /// Its path scope as resolved when it started (a restart keeps it).
    #[serde(default)]
    pub scope: Option<super::resume::Paths>,
    /// Who granted it, as verified when it started (its resumed task_start says so
    /// again).
    #[serde(default)]
    pub granted: Option<crate::task::grant::Granted>,
}

/// The file whose content is the time the daemon was last seen alive.
const HEARTBEAT: &str = "alive";
/// The kernel's lost-event counts last reported (kind -> total). Not a task id's
/// file name (`@` is in no id), so no task can be called so as to overwrite it.
const LOST: &str = "lost@kernel.json";
/// The next task cookie a daemon may give: none below it is given again (the
/// kernel's maps may hold state under an old one). Not `.json`: no task record.
const NEXT_COOKIE: &str = "cookie@kernel";
/// The egress check's drop totals last reported (cgroup id -> total).
const DROPS: &str = "drops@kernel";

impl StateDir {
    fn saved(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn save(&self, s: &Saved) -> std::io::Result<()> {
        self.write_atomic(&format!("{}.json", s.id), &serde_json::to_vec(s)?)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, self.dir.join(name))
    }

    /// The task's end was recorded: a restart must not resume it.
    pub fn mark_ended(&self, id: &str) {
        self.update(id, |s| !std::mem::replace(&mut s.ended, true));
    }

    /// Changes the record of task `id`, if there is one; `f` says whether it changed
    /// (only then is it written).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Saved) -> bool) {
        if let Some(mut s) = self.get(id)
            && f(&mut s)
            && let Err(e) = self.save(&s)
        {
            tracing::warn!("{}: {e}", self.saved(id).display());
        }
    }

    /// The record of task `id`, if there is one.
    fn get(&self, id: &str) -> Option<Saved> {
        std::fs::read(self.saved(id)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Whether task `id` could be recorded now (its record's temporary file written
    /// and removed): asked before a launched task or a delegation takes anything
    /// on, so that one a restart would lose (its processes running on unseen; an
    /// agent can fill the disk to that end) is refused while refusing undoes
    /// nothing.
    pub fn can_record(&self, id: &str) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        let tmp = self.dir.join(format!(".{id}.json.tmp"));
        let probe = || -> std::io::Result<()> {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
            std::fs::write(&tmp, b"{}")?;
            std::fs::remove_file(&tmp)
        };
        probe().map_err(|err| {
            format!("task {id} cannot be recorded in {}: {err} (a restart would lose it)", self.dir.display())
        })
    }

    /// Records a task (bound now); why not, if it cannot (the caller reports it: a
    /// restart would not resume it).
    pub fn record(&self, s: &Saved) -> Result<(), String> {
        self.save(s).map_err(|err| {
            format!("recording task {} in {}: {err} (a restart will not resume it)", s.id, self.dir.display())
        })
    }

    /// A record of task `id` exists (running, ended, or not resumed).
    pub fn has(&self, id: &str) -> bool {
        self.saved(id).exists()
    }

    /// The task is gone: nothing of it to resume.
    pub fn drop_saved(&self, id: &str) {
        let _ = std::fs::remove_file(self.saved(id));
    }

    /// Records that the daemon is alive now (every tick).
    pub fn beat(&self, now: Timestamp) {
        if let Err(e) = self.write_atomic(HEARTBEAT, now.0.to_string().as_bytes()) {
            tracing::debug!("heartbeat in {}: {e}", self.dir.display());
        }
    }

    /// The state directory's lock, for as long as the daemon runs: one daemon per
    /// state directory (a second would take over the first's kernel maps and split
    /// its ring). A daemon killed with SIGKILL holds it until its exit completes,
    /// so this waits up to 15 s.
    pub fn lock(&self) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        crate::lockfile::exclusive_waiting(&file, std::time::Duration::from_secs(15), || {})?.ok_or_else(
            || {
                std::io::Error::other(format!(
                    "{}: another agentmon daemon uses this state directory",
                    path.display()
                ))
            },
        )
    }

    /// Writes `value` (JSON) as the state file `name`; a failure is said, with what
    /// a successor would then do (`then`).
    fn save_json(&self, name: &str, value: &impl serde::Serialize, then: &str) {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        if let Err(e) = self.write_atomic(name, &bytes) {
            tracing::warn!("{}: {e} ({then})", self.dir.join(name).display());
        }
    }

    /// The state file `name` (JSON), or the default: none, or unreadable.
    fn load_json<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> T {
        std::fs::read(self.dir.join(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records the lost counts just reported.
    pub fn save_lost(&self, lost: &std::collections::BTreeMap<u16, u64>) {
        self.save_json(LOST, lost, "a successor may report these losses again");
    }

    /// The lost counts a previous daemon reported (none: nothing, or unreadable).
    pub fn lost_reported(&self) -> std::collections::BTreeMap<u16, u64> {
        self.load_json(LOST)
    }

    /// Records that no cookie below `next` is to be given again.
    pub fn save_next_cookie(&self, next: u32) {
        self.save_json(NEXT_COOKIE, &next, "a successor may give a cookie again");
    }

    /// The lowest cookie a previous daemon left ungiven (0: none recorded).
    pub fn next_cookie(&self) -> u32 {
        self.load_json(NEXT_COOKIE)
    }

    /// Records the egress drop totals just reported.
    pub fn save_drops(&self, said: &std::collections::BTreeMap<u64, u64>) {
        self.save_json(DROPS, said, "a successor may report these drops again");
    }

    /// The egress drop totals a previous daemon reported (none: nothing, or unreadable).
    pub fn drops_reported(&self) -> std::collections::BTreeMap<u64, u64> {
        self.load_json(DROPS)
    }

    /// When a previous daemon was last seen alive (None: never, or unreadable).
    pub fn last_beat(&self) -> Option<Timestamp> {
        let text = std::fs::read_to_string(self.dir.join(HEARTBEAT)).ok()?;
        text.trim().parse::<i128>().ok().map(Timestamp)
    }

    /// The recorded tasks agentmon itself wrote (root's, not writable by others);
    /// anything else found there is removed.
    pub fn records(&self) -> Vec<Saved> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return out };
        for e in dir.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") || path.file_name().is_some_and(|n| n == LOST) {
                continue;
            }
            let trusted = std::fs::symlink_metadata(&path).is_ok_and(|m| {
                m.is_file() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
            });
            match trusted.then(|| std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok())) {
                Some(Some(s)) => out.push(s),
                _ => {
                    tracing::warn!("{}: unreadable or untrusted task record, removed", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successor gives no cookie below the floor and reports drops from what was
    /// reported; reading the task records leaves both.
    #[test]
    fn the_cookie_floor_and_drop_totals_outlive_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir { dir: dir.path().join("state") };
        assert_eq!((st.next_cookie(), st.drops_reported()), (0, Default::default()));
        st.save_next_cookie(42);
        st.save_drops(&[(7u64, 3u64)].into());
        assert!(st.records().is_empty());
        assert_eq!((st.next_cookie(), st.drops_reported()), (42, [(7u64, 3u64)].into()));
    }

    /// A task may be called anything its manifest allows: `lost` was the loss
    /// counts' file name, so a sub-task so named overwrote them (found by review).
    #[test]
    fn no_task_record_takes_the_loss_counts_place() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir { dir: dir.path().join("state") };
        st.save_lost(&[(3u16, 7u64)].into());
        for id in ["lost", "alive", "lock", "lost@kernel"] {
            let s = Saved {
                id: id.into(),
                manifest: String::new(),
                file: String::new(),
                root: 1,
                enforce: false,
                events: None,
                events_file: None,
                scope: None,
                cgroup: None,
                origin_cgroup: None,
                expires: None,
                ended: false,
                launch: Vec::new(),
                cookie: Some(9),
                parent: None,
                keeper: None,
                granted: None,
            };
            let manifest = format!("id: {id}\nmode: read\n");
            if crate::task::parse(&manifest, std::path::Path::new("t.yaml"), Timestamp(0)).is_ok() {
                st.save(&s).unwrap();
            }
        }
        assert_eq!(st.lost_reported(), [(3u16, 7u64)].into());
        let ids: Vec<String> = st.records().into_iter().map(|s| s.id).collect();
        assert!(ids.contains(&"lost".to_string()), "{ids:?}");
        assert_eq!(st.lost_reported(), [(3u16, 7u64)].into(), "reading the records keeps the counts");
    }
}
