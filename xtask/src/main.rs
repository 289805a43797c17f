//! Developer tasks. `cargo xtask bench` measures agentmon's overhead side by side with
//! bare runs and with the peers (bpftrace, auditd, strace), in one run.

mod bench;
mod enforce;
mod floor;
mod hooks;
mod natsbench;
mod natscluster;
mod peers;
mod pipeline;
mod programs;
mod soak;
mod start;
mod storm;
mod tiers;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Overhead of agentmon vs bare vs bpftrace/auditd/strace on tight syscall loops,
    /// and pipeline throughput. Needs root; prints a markdown report.
    Bench(bench::Options),
    /// What enforcement costs: observe vs enforce vs bare on the same loops, the
    /// approval gate's per-call cost, and the operator round trip. Needs root.
    BenchEnforce(enforce::Options),
    /// Each kernel program's run time per call (the kernel's accounting) for an
    /// enforced task's loops, on this host's enforcement tier. Needs root.
    BenchHooks(hooks::Options),
    /// What a process outside every task pays while agentmon runs, on each
    /// observation tier (syscall tracepoints, fexit). Needs root.
    BenchTiers(tiers::Options),
    /// Real programs (tar, git, grep, a compile, a task's start) bare, observed and
    /// enforced through a daemon, and under the peers; the last part of `bench`.
    BenchPrograms(programs::Options),
    /// A task's start through a daemon, observed and enforced, optionally alternated
    /// with another build (`--against`). Needs root.
    BenchStart(start::Options),
    /// NATS: acknowledged publish throughput and syscall-to-NATS latency. Needs root.
    BenchNats(natsbench::Options),
    /// The daemon under a long stream of short-lived processes: RSS over time, every
    /// exec seen, no loss. Needs root.
    Soak(soak::Options),
    /// File side effects of several tasks at full speed while another process keeps a
    /// core busy: events seen against operations made, and every loss. Needs root.
    Storm(storm::Options),
    /// Userspace pipeline throughput only (the production record path: decode, enrich,
    /// steps and gates, judge; then JSON), no root needed.
    Pipeline {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench(o) => bench::run(o),
        Cmd::BenchEnforce(o) => enforce::run(o),
        Cmd::BenchNats(o) => natsbench::run(o),
        Cmd::BenchHooks(o) => hooks::run(o),
        Cmd::BenchPrograms(o) => programs::run(o),
        Cmd::BenchStart(o) => start::run(o),
        Cmd::BenchTiers(o) => tiers::run(o),
        Cmd::Soak(o) => soak::run(o),
        Cmd::Storm(o) => storm::run(o),
        Cmd::Pipeline { events } => {
            println!("pipeline: {:.0} events/s", pipeline::events_per_sec(events)?);
            println!("policy engine: {:.0} events/s judged", pipeline::judged_per_sec(events)?);
            Ok(())
        }
    }
}
