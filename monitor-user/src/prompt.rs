//! What a task's prompt records keep of the prompt (`agentmon step prompt`, the
//! Claude Code `UserPromptSubmit` hook): always its SHA-256 and length, so that a
//! responder holding the transcript can tie it to the record; its text only when the
//! host asks for it, with secrets of known shapes and of the host's own patterns
//! redacted, and bounded. Pure: text in, fields out.

use regex::Regex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The most prompt text a request carries (a control request is at most 256 KiB):
/// a longer prompt is cut by the caller and the record says so.
pub const MAX_PROMPT_BYTES: usize = 192 * 1024;

/// Shapes of secrets redacted from recorded prompt text by default: cloud and forge
/// access keys, API keys, bearer tokens, private key blocks.
pub const DEFAULT_REDACT: &[&str] = &[
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",
    r"\bsk-[A-Za-z0-9_-]{20,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
];

/// How prompts are recorded on this host.
#[derive(Debug, Clone)]
pub struct PromptPolicy {
    /// Record the text (redacted, bounded), not only its hash and length.
    pub text: bool,
    /// The most text kept (bytes, cut at a character boundary).
    pub max_bytes: usize,
    pub redact: Vec<Regex>,
}

impl Default for PromptPolicy {
    fn default() -> Self {
        Self::new(false, 4096, &[]).expect("the default redaction patterns are valid")
    }
}

impl PromptPolicy {
    /// The policy with `extra` patterns redacted besides [`DEFAULT_REDACT`]; a bad
    /// pattern is an error naming it.
    /// Without `text` only `extra` is compiled (checked): nothing is redacted from a
    /// hash, and compiling the defaults costs every `agentmon exec` a millisecond.
    pub fn new(text: bool, max_bytes: usize, extra: &[String]) -> Result<Self, String> {
        let defaults = DEFAULT_REDACT.iter().filter(|_| text).map(|p| p.to_string());
        let redact = defaults
            .chain(extra.iter().cloned())
            .map(|p| Regex::new(&p).map_err(|e| format!("redaction pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { text, max_bytes, redact })
    }

    /// The record's fields for `text` (what the caller sent; `cut`: the caller cut
    /// a longer prompt to [`MAX_PROMPT_BYTES`], whose whole length was `bytes`).
    pub fn fields(&self, text: &str, cut: Option<u64>) -> Vec<(&'static str, Value)> {
        let mut f = vec![
            ("prompt_sha256", json!(hex::encode(Sha256::digest(text.as_bytes())))),
            ("prompt_bytes", json!(cut.unwrap_or(text.len() as u64))),
        ];
        if cut.is_some() {
            // The hash is of what was sent: the first part of the prompt.
            f.push(("prompt_sha256_of_first_bytes", json!(text.len())));
        }
        if self.text {
            let mut kept = text.to_string();
            let mut redacted = 0;
            for r in &self.redact {
                kept = r
                    .replace_all(&kept, |_: &regex::Captures| {
                        redacted += 1;
                        "[redacted]"
                    })
                    .into_owned();
            }
            let truncated = kept.len() > self.max_bytes;
            if truncated {
                let mut end = self.max_bytes;
                while !kept.is_char_boundary(end) {
                    end -= 1;
                }
                kept.truncate(end);
            }
            f.push(("prompt", json!(kept)));
            if redacted > 0 {
                f.push(("prompt_redacted", json!(redacted)));
            }
            if truncated || cut.is_some() {
                f.push(("prompt_truncated", json!(true)));
            }
        }
        f
    }
}

/// `text` cut to at most `max` bytes at a character boundary, and the whole
/// length when it was cut.
pub fn cut(text: &str, max: usize) -> (&str, Option<u64>) {
    if text.len() <= max {
        return (text, None);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], Some(text.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(f: &'a [(&str, Value)], k: &str) -> Option<&'a Value> {
        f.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }

    #[test]
    fn a_prompt_is_kept_as_its_hash_unless_the_host_asks_for_text() {
        let f = PromptPolicy::default().fields("fix the bug", None);
        assert_eq!(get(&f, "prompt_sha256"), Some(&json!(hex::encode(Sha256::digest(b"fix the bug")))));
        assert_eq!(get(&f, "prompt_bytes"), Some(&json!(11)));
        assert!(get(&f, "prompt").is_none(), "no text by default");
    }

    #[test]
    fn recorded_text_is_redacted_and_bounded() {
        let p = PromptPolicy::new(true, 40, &["ticket-[0-9]+".into()]).unwrap();
        let text = "use AKIAABCDEFGHIJKLMNOP and ghp_0123456789abcdefghijklmnopqrstuvwxyzAB for ticket-42";
        let f = p.fields(text, None);
        let kept = get(&f, "prompt").and_then(|v| v.as_str()).unwrap();
        assert!(!kept.contains("AKIA") && !kept.contains("ghp_"), "{kept}");
        assert!(kept.len() <= 40 && kept.starts_with("use [redacted] and [redacted]"), "{kept}");
        assert_eq!(get(&f, "prompt_redacted"), Some(&json!(3)));
        assert_eq!(get(&f, "prompt_truncated"), Some(&json!(true)));
        // The hash is of the prompt as given (a responder matches it to the transcript).
        assert_eq!(get(&f, "prompt_sha256"), Some(&json!(hex::encode(Sha256::digest(text.as_bytes())))));
        // A multi-byte character is never split.
        let f = PromptPolicy::new(true, 2, &[]).unwrap().fields("añob", None);
        assert_eq!(get(&f, "prompt"), Some(&json!("a")));
        // A bad pattern names itself.
        assert!(PromptPolicy::new(true, 1, &["(".into()]).unwrap_err().contains("\"(\""));
    }

    #[test]
    fn a_prompt_cut_by_its_caller_says_so() {
        let long = "é".repeat(10);
        let (sent, whole) = cut(&long, 5);
        assert_eq!((sent, whole), ("éé", Some(20)));
        let f = PromptPolicy::new(true, 100, &[]).unwrap().fields(sent, whole);
        assert_eq!(get(&f, "prompt_bytes"), Some(&json!(20)));
        assert_eq!(get(&f, "prompt_sha256_of_first_bytes"), Some(&json!(4)));
        assert_eq!(get(&f, "prompt_truncated"), Some(&json!(true)));
        assert_eq!(cut("abc", 5), ("abc", None));
    }
}
