//! The baseline rules shipped in `rules/`, built into the binary: the embedded
//! default when no rules directory is given.

use std::path::Path;

use super::{RuleError, RuleSet};

macro_rules! shipped {
    ($($f:literal),* $(,)?) => {
        &[$(($f, include_str!(concat!("../../../rules/", $f)))),*]
    };
}

/// (file name, text) of every shipped rule file.
pub const FILES: &[(&str, &str)] = shipped!(
    "credentials.yaml",
    "execution.yaml",
    "network.yaml",
    "persistence.yaml",
    "privilege.yaml",
    "scope.yaml",
    "supply-chain.yaml",
);

/// The shipped rules (they are checked by the test suite, so this cannot fail in a
/// released binary; the error is still returned, never unwrapped).
pub fn rules() -> Result<RuleSet, Vec<RuleError>> {
    RuleSet::from_texts(FILES.iter().map(|(f, t)| (Path::new(*f), *t)), Vec::new())
}
