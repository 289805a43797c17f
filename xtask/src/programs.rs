//! Real programs under watch (`cargo xtask bench`, or alone `cargo xtask
//! bench-programs`): tar extracting /usr/include and rm -rf of it, a git clone and
//! status, grep -r over /usr/include, a parallel compile of C files, and /bin/true
//! (what starting a task costs). Each is timed whole, wall clock, bare; under a
//! running daemon (the deployed shape, so the programs' load is not counted) as an
//! observed and as an enforced task with the shipped rules; and under host-wide
//! bpftrace and auditd and `strace -f`, interleaved over rounds in one run.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::{bench::ratio_table, peers};

#[derive(clap::Args)]
pub struct Options {
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the peers (bpftrace, auditd, strace).
    #[arg(long)]
    pub no_peers: bool,
}

pub const PROGRAMS: [&str; 5] = ["true", "tar", "git", "grep", "compile"];
const MODES: [&str; 6] = [
    "bare",
    "agentmon observe",
    "agentmon enforce",
    "bpftrace (host-wide)",
    "auditd (host-wide)",
    "strace -f",
];

/// The files the programs work on, made once: a tarball of /usr/include, a git
/// repository of its linux/ headers, and C sources with a Makefile.
struct Fixture {
    dir: PathBuf,
    work: PathBuf,
}

impl Fixture {
    fn new(dir: &Path) -> anyhow::Result<Fixture> {
        let work = dir.join("work");
        std::fs::create_dir_all(work.join("tmp"))?;
        sh(&format!("tar cf {d}/include.tar -C / usr/include", d = dir.display()))?;
        sh(&format!(
            "git init -q {d}/repo && cp -r /usr/include/linux {d}/repo/ && git -C {d}/repo add -A && \
             git -C {d}/repo -c user.name=bench -c user.email=bench@localhost commit -q -m headers",
            d = dir.display()
        ))?;
        let src = dir.join("src");
        std::fs::create_dir_all(&src)?;
        let mut objs = Vec::new();
        for i in 0..8 {
            std::fs::write(
                src.join(format!("m{i}.c")),
                format!(
                    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <sys/stat.h>\n\
                     int f{i}(const char *s) {{ struct stat st; char b[64]; snprintf(b, sizeof b, \"%s{i}\", s); \
                     return stat(b, &st) == 0 ? (int)strlen(b) : atoi(s); }}\n"
                ),
            )?;
            objs.push(format!("m{i}.o"));
        }
        std::fs::write(
            src.join("main.c"),
            "int main(void) { return 0; }\n".to_string()
                + &(0..8).map(|i| format!("int f{i}(const char *);\n")).collect::<String>(),
        )?;
        std::fs::write(
            src.join("Makefile"),
            format!("prog: main.o {o}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O2 -c -o $@ $<\n", o = objs.join(" ")),
        )?;
        Ok(Fixture { dir: dir.to_path_buf(), work })
    }

    /// The shell command of a program, in `work`.
    fn command(&self, program: &str) -> String {
        let (d, w) = (self.dir.display(), self.work.display());
        match program {
            "true" => "/bin/true".into(),
            "tar" => format!("tar xf {d}/include.tar -C {w} && rm -rf {w}/usr"),
            "git" => format!("git clone -q {d}/repo {w}/r && git -C {w}/r status --short && rm -rf {w}/r"),
            "grep" => "grep -r -c -e define /usr/include > /dev/null".into(),
            "compile" => format!("cp -r {d}/src {w}/b && make -s -j2 -C {w}/b && rm -rf {w}/b"),
            other => unreachable!("no program {other}"),
        }
    }

    fn manifest(&self, id: &str, enforce: bool) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{id}.yaml"));
        let w = self.work.display();
        std::fs::write(
            &path,
            format!(
                "id: {id}\nmode: execute\nenforcement: {}\nscope:\n  write: [\"{w}/**\"]\n  delete: [\"{w}/**\"]\n  \
                 exec: [\"/usr/bin/**\", \"/bin/**\", \"/usr/lib/**\", \"/usr/libexec/**\", \"/usr/local/**\"]\n",
                if enforce { "enforce" } else { "observe" }
            ),
        )?;
        Ok(path)
    }
}

fn sh(cmd: &str) -> anyhow::Result<()> {
    let st = Command::new("sh").args(["-c", cmd]).stdout(Stdio::null()).status()?;
    if !st.success() {
        bail!("`{cmd}`: {st}");
    }
    Ok(())
}

/// Runs a command line to its end; returns its wall-clock time in ms.
fn timed(argv: &[String], env_tmp: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env("TMPDIR", env_tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("{argv:?}"))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("{argv:?} exited {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(ms)
}

/// Every program under every mode, `o.rounds` times interleaved; prints the table.
pub fn run_with(agentmon: &Path, o: &Options) -> anyhow::Result<()> {
    let peers_ok =
        !o.no_peers && ["bpftrace", "auditd", "auditctl", "strace"].iter().all(|c| peers::which(c).is_some());
    if !o.no_peers && !peers_ok {
        bail!(
            "peers missing: install bpftrace, auditd and strace (scripts/setup.sh does), or pass --no-peers"
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = std::fs::canonicalize(tmp.path())?;
    let fx = Fixture::new(&dir)?;
    let tmpdir = fx.work.join("tmp");
    let shell = |p: &str| vec!["sh".to_string(), "-c".into(), fx.command(p)];
    let mut results: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut n = 0;
    for round in 1..=o.rounds {
        eprintln!("programs: round {round}/{}", o.rounds);
        for p in PROGRAMS {
            results.entry(("bare", p)).or_default().push(timed(&shell(p), &tmpdir)?);
        }
        {
            let ddir = dir.join(format!("daemon-{round}"));
            std::fs::create_dir_all(&ddir)?;
            let (daemon, sock) = peers::daemon(agentmon, &ddir)?;
            for p in PROGRAMS {
                for (mode, enforce) in [("agentmon observe", false), ("agentmon enforce", true)] {
                    // A task id per run: the daemon keeps an ended task's id until its
                    // last process is gone.
                    n += 1;
                    let task = fx.manifest(&format!("prog-{n}"), enforce)?;
                    let mut c =
                        vec![agentmon.display().to_string(), "exec".into(), "-q".into(), "--daemon".into()];
                    c.push(sock.display().to_string());
                    c.extend(["--task".into(), task.display().to_string(), "--".into()]);
                    c.extend(shell(p));
                    results.entry((mode, p)).or_default().push(timed(&c, &tmpdir)?);
                }
            }
            daemon.terminate(std::time::Duration::from_secs(10))?;
        }
        if peers_ok {
            {
                let _bg = peers::bpftrace_host()?;
                for p in PROGRAMS {
                    results.entry(("bpftrace (host-wide)", p)).or_default().push(timed(&shell(p), &tmpdir)?);
                }
            }
            {
                let _bg = peers::auditd_host()?;
                for p in PROGRAMS {
                    results.entry(("auditd (host-wide)", p)).or_default().push(timed(&shell(p), &tmpdir)?);
                }
            }
            for p in PROGRAMS {
                let mut c: Vec<String> =
                    ["strace", "-f", "-qq", "-e", "trace=%file,%process,connect", "-o", "/dev/null"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                c.extend(shell(p));
                results.entry(("strace -f", p)).or_default().push(timed(&c, &tmpdir)?);
            }
        }
    }
    println!("\n### Real programs (wall clock in ms, median of {} rounds; ratio to bare)\n", o.rounds);
    println!(
        "true: /bin/true (a task's start); tar: `tar x` of /usr/include then `rm -rf` of it; git: clone of a \
         repository of its linux/ headers, status, rm -rf; grep: `grep -r` over /usr/include; compile: `make -j2` \
         of 9 C files. agentmon through a running daemon with the shipped rules.\n"
    );
    ratio_table(&mut results, &MODES, &PROGRAMS, "ms");
    Ok(())
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !crate::bench::nix_is_root() {
        bail!("the daemon loads eBPF programs and auditd rules: run it as root");
    }
    let (agentmon, _) = crate::bench::build()?;
    run_with(&agentmon, &o)
}
