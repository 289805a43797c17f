//! `agentmon rules check`: validate every rule file and run every example.

use std::path::Path;

use super::{RuleSet, examples, rules};
use crate::sensitive::SensitiveSet;

/// Outcome of a check: errors (fatal) and warnings, each `file:line: message`.
#[derive(Debug, Default)]
pub struct Report {
    pub rules: usize,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks the rule files of `dir` (examples included). `sensitive` is the set the
/// kernel reports reads for: a rule about reads outside it could never fire.
pub fn check_dir(dir: &Path, sensitive: &SensitiveSet) -> Report {
    checked(dir, sensitive).0
}

/// Loads the rules of `dir` only if `agentmon rules check` would pass them: every
/// file read and parsed, every example holding, at least one file. What `--rules`
/// and hot reload use; `Err`: every problem, `file:line: message`.
pub fn load(dir: &Path, sensitive: &SensitiveSet) -> Result<RuleSet, Vec<String>> {
    match checked(dir, sensitive) {
        (r, Some(set)) if r.errors.is_empty() => Ok(set),
        (r, _) => Err(r.errors),
    }
}

fn checked(dir: &Path, sensitive: &SensitiveSet) -> (Report, Option<RuleSet>) {
    let files = match rules::rule_files(dir) {
        Ok(f) => f,
        Err(e) => return (Report { errors: vec![e.to_string()], ..Default::default() }, None),
    };
    // Each file on its own, so one broken file does not hide the others' problems.
    let mut errors = Vec::new();
    let mut good = Vec::new();
    for f in &files {
        match rules::read_rule_file(f) {
            Ok(text) => match rules::parse_file(&text, f) {
                Ok(mut r) => good.append(&mut r),
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    if files.is_empty() {
        errors.push(format!("{}:0: no rule files (*.yaml)", dir.display()));
    }
    let (mut report, set) = match RuleSet::new(good) {
        Ok(set) => (check_set(&set, sensitive), Some(set)),
        Err(e) => (Report { errors: vec![e.to_string()], ..Default::default() }, None),
    };
    errors.append(&mut report.errors);
    report.errors = errors;
    (report, set)
}

pub fn check_set(set: &RuleSet, sensitive: &SensitiveSet) -> Report {
    let mut r = Report { rules: set.len(), ..Default::default() };
    r.errors.extend(examples::check(set).iter().map(|f| f.to_string()));
    for rule in &set.rules {
        for (want, line, ex) in &rule.examples {
            if *want
                && ex.kind == "sensitive_read"
                && let Some(p) = &ex.path
                && !sensitive.matches(p)
            {
                r.warnings.push(format!(
                    "{}:{line}: warning: rule {}: {p} is not in the sensitive-read set, so the kernel never \
                     reports reading it (add it with --sensitive)",
                    rule.file.display(),
                    rule.id
                ));
            }
        }
    }
    r
}
