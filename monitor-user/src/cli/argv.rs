//! Secrets given on the command line, hidden from it once parsed.
//!
//! `/proc/PID/cmdline` is readable by every local user, agents included: a NATS
//! password or token passed as a flag (or in a `--nats` URL) would be theirs for as
//! long as agentmon runs. Once the flags are parsed, the secret's bytes in the
//! process's argument area (the memory the kernel shows as cmdline, `arg_start..
//! arg_end` in `/proc/self/stat`) are overwritten in place, as setproctitle does; the
//! length stays visible. What another user read between the exec and this is gone,
//! and a process that started agentmon (sudo, timeout) keeps its own copy: agentmon
//! says so. The environment variables, readable only by agentmon's user, are the
//! way to pass them (the watched command does not inherit them, see launch.rs).

use std::{io, ops::Range};

/// The flags whose values are secrets, with the environment variable to use instead.
pub const SECRET_FLAGS: &[(&str, &str)] =
    &[("--nats-password", "AGENTMON_NATS_PASSWORD"), ("--nats-token", "AGENTMON_NATS_TOKEN")];

/// The flag whose URLs may carry credentials (`nats://user:password@host`,
/// `nats://token@host`).
pub const URL_FLAG: &str = "--nats";

/// The credentials of each URL in `v` (a comma-separated list): the password of
/// `user:password@`, or the whole `token@`.
fn url_secrets(v: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    for url in v.split(|&b| b == b',') {
        if let Some(s) = url.windows(3).position(|w| w == b"://") {
            let auth = &url[s + 3..];
            let end = auth.iter().position(|&b| b == b'/').unwrap_or(auth.len());
            if let Some(a) = auth[..end].iter().rposition(|&b| b == b'@') {
                let from = auth[..a].iter().position(|&b| b == b':').map_or(0, |c| c + 1);
                if a > from {
                    out.push(at + s + 3 + from..at + s + 3 + a);
                }
            }
        }
        at += url.len() + 1;
    }
    out
}

/// The byte ranges of secrets in a NUL-separated argument area, with the flag each
/// belongs to. Both `--flag VALUE` and `--flag=VALUE`; nothing after `--` (the
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
        for flag in SECRET_FLAGS.iter().map(|(f, _)| *f).chain([URL_FLAG]) {
            let value = if a == flag.as_bytes() {
                args.get(i + 1).copied().inspect(|_| i += 1)
            } else {
                a.strip_prefix(flag.as_bytes())
                    .and_then(|r| r.strip_prefix(b"="))
                    .map(|v| (start + flag.len() + 1, v))
            };
            let Some((vs, v)) = value else { continue };
            if flag == URL_FLAG {
                spans.extend(url_secrets(v).into_iter().map(|r| (vs + r.start..vs + r.end, flag)));
            } else {
                spans.push((vs..vs + v.len(), flag));
            }
            break;
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

/// Overwrites every secret in this process's command line with `*`. Returns the
/// flags hidden. In place, through memory: opening /proc/self/mem to write would be
/// a side effect of its own for an agentmon run inside a task.
pub fn hide_secrets() -> io::Result<Vec<&'static str>> {
    let area = arg_area()?;
    if area.end <= area.start || area.end - area.start > 1 << 24 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no argument area"));
    }
    let len = (area.end - area.start) as usize;
    // SAFETY: arg_start..arg_end is this process's own argument area, mapped and
    // writable (the initial stack); nothing reads it once the flags are parsed (the
    // parsed options hold copies).
    let buf = unsafe { std::slice::from_raw_parts_mut(area.start as *mut u8, len) };
    let spans = secret_spans(buf);
    for (r, _) in &spans {
        buf[r.clone()].fill(b'*');
    }
    Ok(spans.into_iter().map(|(_, f)| f).collect())
}

/// Hides secrets given as flags, and says so: they were readable until now. Touches
/// nothing when no such flag or URL was given.
pub fn hide_and_warn() {
    let given = std::env::args_os().any(|a| {
        let a = a.as_encoded_bytes();
        SECRET_FLAGS.iter().any(|(f, _)| a.starts_with(f.as_bytes())) || a.windows(3).any(|w| w == b"://")
    });
    if !given {
        return;
    }
    match hide_secrets() {
        Ok(flags) => {
            let mut said = std::collections::BTreeSet::new();
            for f in flags.into_iter().filter(|f| said.insert(*f)) {
                let env = SECRET_FLAGS.iter().find(|(n, _)| *n == f).map_or("AGENTMON_NATS", |(_, e)| e);
                tracing::warn!(
                    "a secret was given with {f} on the command line, which every local user can read: hidden \
                     from it now, but it may have been read before, and a process that started agentmon (sudo) \
                     still shows it; pass it in {env} (or use --nats-creds FILE)"
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

    #[test]
    fn finds_credentials_in_urls() {
        let area =
            b"agentmon\0exec\0--nats\0nats://u:pw@h:4222,nats://tok@h2/x,nats://h3\0--nats=tls://a:b@c\0";
        let got: Vec<&[u8]> = secret_spans(area).into_iter().map(|(r, _)| &area[r]).collect();
        assert_eq!(got, vec![&b"pw"[..], &b"tok"[..], &b"b"[..]]);
        // A URL without credentials, and an @ in its path, are nothing.
        assert!(secret_spans(b"agentmon\0--nats\0nats://h/x@y\0").is_empty());
    }
}
