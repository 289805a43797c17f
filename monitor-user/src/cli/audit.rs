//! `agentmon audit verify`.

use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check an audit chain: every record's hash and link, the order, the signed
    /// checkpoints, and that the tail is signed (a truncated tail is found). Exits 0
    /// when intact, 1 when not, 2 when the file cannot be read.
    Verify {
        file: PathBuf,
        /// Trust only checkpoints signed by this public key (the `.pub` file).
        #[arg(long, value_name = "KEY")]
        pubkey: Option<PathBuf>,
    },
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<i32> {
    let AuditCmd::Verify { file, pubkey } = cmd;
    let report = match crate::audit::verify(&file, pubkey.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentmon: {e}");
            return Ok(2);
        }
    };
    for p in &report.problems {
        println!("{}: {p}", file.display());
    }
    if report.omitted > 0 {
        println!("{}: {} more problems not shown", file.display(), report.omitted);
    }
    for n in &report.notes {
        println!("{}: note: {n}", file.display());
    }
    let who = match (&report.key, report.trusted) {
        (Some(k), true) => format!("signed by the trusted key {k}"),
        (Some(k), false) => format!("signed by {k} (not checked against a trusted key: use --pubkey)"),
        (None, _) => "no valid checkpoint".into(),
    };
    if report.is_ok() {
        println!(
            "{}: intact: {} records, {} checkpoints, {who}",
            file.display(),
            report.records,
            report.checkpoints
        );
        Ok(0)
    } else {
        println!(
            "{}: NOT intact: {} problem(s); {who}",
            file.display(),
            report.problems.len() as u64 + report.omitted
        );
        Ok(1)
    }
}
