//! Secrets given on the command line, hidden from it once parsed.
//!
//! `/proc/PID/cmdline` is readable by every local user, agents included: a NATS
//! password or token passed as a flag would be theirs for as long as agentmon runs
//! (the environment, `/proc/PID/environ`, is readable only by agentmon's own user).
//! Once the flags are parsed, the value's bytes in the process's argument area (the
//! memory the kernel shows as cmdline, `arg_start..arg_end` in `/proc/self/stat`) are
//! overwritten through `/proc/self/mem`, as setproctitle does; the length stays
//! visible. What another user read between the exec and this is gone: agentmon says
//! so, naming the environment variable to use instead.

use std::{fs::File, io, ops::Range, os::unix::fs::FileExt};

/// The flags whose values are secrets, with the environment variable to use instead.
pub const SECRET_FLAGS: &[(&str, &str)] =
    &[("--nats-password", "AGENTMON_NATS_PASSWORD"), ("--nats-token", "AGENTMON_NATS_TOKEN")];

/// The byte ranges of secret values in a NUL-separated argument area, with the flag
/// each belongs to. Both `--flag VALUE` and `--flag=VALUE`; nothing after `--` (the
/// watched command's own arguments are not agentmon's flags).
pub fn secret_spans(area: &[u8]) -> Vec<(Range<usize>, &'static str)> {
    let mut spans = Vec::new();
    let mut args = Vec::new();
    let mut at = 0;
    for a in area.split(|&b| b == 0) {
        args.push((at, a));
        at += a.len() + 1;
    }
    let mut i = 0;
    while i < args.len() {
        let (start, a) = args[i];
        if a == b"--" {
            break;
        }
        for &(flag, _) in SECRET_FLAGS {
            if a == flag.as_bytes() {
                if let Some(&(vs, v)) = args.get(i + 1) {
                    spans.push((vs..vs + v.len(), flag));
                    i += 1;
                }
            } else if let Some(v) = a.strip_prefix(flag.as_bytes()).and_then(|r| r.strip_prefix(b"=")) {
                let vs = start + flag.len() + 1;
                spans.push((vs..vs + v.len(), flag));
            }
        }
        i += 1;
    }
    spans
}

/// `arg_start` and `arg_end` of this process (fields 48 and 49 of /proc/self/stat,
/// counted after the parenthesised command name, which may hold spaces).
fn arg_area() -> io::Result<Range<u64>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat");
    let rest = stat.rsplit_once(')').ok_or_else(bad)?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')', field 3 (state) is index 0: field N is index N - 3.
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
    Ok(num(48)?..num(49)?)
}

/// Overwrites every secret flag's value in this process's command line with `*`.
/// Returns the flags hidden.
pub fn hide_secrets() -> io::Result<Vec<&'static str>> {
    let area = arg_area()?;
    let mem = File::options().read(true).write(true).open("/proc/self/mem")?;
    let mut buf = vec![0u8; (area.end - area.start) as usize];
    mem.read_exact_at(&mut buf, area.start)?;
    let spans = secret_spans(&buf);
    for (r, _) in &spans {
        mem.write_all_at(&vec![b'*'; r.len()], area.start + r.start as u64)?;
    }
    Ok(spans.into_iter().map(|(_, f)| f).collect())
}

/// Hides secrets given as flags, and says so: they were readable until now. Touches
/// nothing when no such flag was given (`agentmon step` runs inside tasks, where
/// opening /proc/self/mem to write would be a side effect of its own).
pub fn hide_and_warn() {
    let given = std::env::args_os()
        .any(|a| SECRET_FLAGS.iter().any(|(f, _)| a.as_encoded_bytes().starts_with(f.as_bytes())));
    if !given {
        return;
    }
    match hide_secrets() {
        Ok(flags) => {
            for f in flags {
                let env = SECRET_FLAGS.iter().find(|(n, _)| *n == f).map_or("", |(_, e)| e);
                tracing::warn!(
                    "{f} was given on the command line, which every local user can read: hidden from it now, but \
                     it may have been read before; pass it in {env} instead"
                );
            }
        }
        Err(e) => {
            tracing::warn!("could not hide secrets given on the command line from /proc/PID/cmdline: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_secret_values_in_either_form_before_the_command() {
        let area = b"agentmon\0exec\0--nats-token\0s3cret\0--nats-password=pw\0--\0cmd\0--nats-token\0mine\0";
        let got: Vec<(&[u8], &str)> = secret_spans(area).into_iter().map(|(r, f)| (&area[r], f)).collect();
        assert_eq!(got, vec![(&b"s3cret"[..], "--nats-token"), (&b"pw"[..], "--nats-password")]);
        // A flag with no value after it, and a look-alike, are nothing.
        assert!(secret_spans(b"agentmon\0--nats-token").is_empty());
        assert!(secret_spans(b"agentmon\0--nats-tokens=x\0").is_empty());
    }
}
