//! The checkpoint signing key: an Ed25519 key in a file only its owner can read,
//! created on first use, with its public key next to it as `<key>.pub`.
//!
//! Both files hold lowercase hex and a newline: the key file the 32-byte secret seed,
//! the `.pub` file the 32-byte public key.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{AuditError, CHECKPOINT_CONTEXT};

/// The message a checkpoint signs: `agentmon-audit-checkpoint/1\n<seq>\n<hash>`, where
/// `seq` (decimal) and `hash` (lowercase hex) are those of the record it covers.
pub fn checkpoint_message(covers_seq: u64, covers_hash: &str) -> Vec<u8> {
    format!("{CHECKPOINT_CONTEXT}\n{covers_seq}\n{covers_hash}").into_bytes()
}

/// `<key>.pub`: where the public key of the key at `key_path` is written.
pub fn public_key_path(key_path: &Path) -> PathBuf {
    let mut s = OsString::from(key_path.as_os_str());
    s.push(".pub");
    PathBuf::from(s)
}

pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// A public key from 64 hex digits.
pub(crate) fn parse_public_key(s: &str) -> Option<VerifyingKey> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Reads a public key file (hex, as `<key>.pub` is written).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| AuditError::Key { path: path.into(), source })?;
    parse_public_key(text.trim()).ok_or_else(|| AuditError::KeyFormat {
        path: path.into(),
        message: "not an Ed25519 public key (64 hex digits)".into(),
    })
}

/// Loads the signing key at `path`, or creates it (mode 0600, never overwriting a
/// file) with 32 random bytes from the OS. Refuses a key file that group or others
/// can access or that another user owns. Writes `<key>.pub` if it is missing, and
/// refuses a `.pub` that does not match the key.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    let key = match File::open(path) {
        Ok(f) => load(path, f)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create(path)? {
            Some(k) => k,
            // Another process created it first.
            None => load(path, File::open(path).map_err(|source| key_err(path, source))?)?,
        },
        Err(source) => return Err(key_err(path, source)),
    };
    write_public_key(path, &key.verifying_key())?;
    Ok(key)
}

fn key_err(path: &Path, source: io::Error) -> AuditError {
    AuditError::Key { path: path.into(), source }
}

fn load(path: &Path, mut f: File) -> Result<SigningKey, AuditError> {
    // Checked on the open file, not the path: no window to swap it.
    let md = f.metadata().map_err(|source| key_err(path, source))?;
    if !md.is_file() {
        return Err(AuditError::KeyFormat { path: path.into(), message: "not a regular file".into() });
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuditError::KeyMode { path: path.into(), mode });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if md.uid() != uid {
        return Err(AuditError::KeyOwner { path: path.into(), owner: md.uid(), uid });
    }
    // 64 hex digits and a newline; a few bytes more to tell "too long" apart.
    let mut buf = [0u8; 80];
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if n == buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(key_err(path, source)),
        }
    }
    let text = buf[..n].trim_ascii();
    let mut seed = [0u8; 32];
    let ok = text.len() == 64 && hex::decode_to_slice(text, &mut seed).is_ok();
    buf.fill(0);
    if !ok {
        return Err(AuditError::KeyFormat {
            path: path.into(),
            message: "not an Ed25519 secret key (64 hex digits)".into(),
        });
    }
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// Creates a new key file; `None` if the file appeared meanwhile.
fn create(path: &Path) -> Result<Option<SigningKey>, AuditError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| AuditError::Random { path: path.into(), message: e.to_string() })?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(source) => return Err(key_err(path, source)),
    };
    let mut text = hex::encode(key.as_bytes()).into_bytes();
    text.push(b'\n');
    let written = f.write_all(&text).and_then(|()| f.sync_all());
    text.fill(0);
    if let Err(source) = written {
        // A half-written key would be refused on the next start anyway.
        let _ = std::fs::remove_file(path);
        return Err(key_err(path, source));
    }
    Ok(Some(key))
}

/// Writes `<key>.pub`, or checks the one that is there.
fn write_public_key(key_path: &Path, key: &VerifyingKey) -> Result<(), AuditError> {
    let path = public_key_path(key_path);
    let hex = public_key_hex(key);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == hex => return Ok(()),
        Ok(_) => {
            return Err(AuditError::PublicKeyMismatch { path, key: key_path.into(), expected: hex });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(AuditError::Key { path, source }),
    }
    let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path) {
        Ok(f) => f,
        // Written by a concurrent first start: check it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return write_public_key(key_path, key),
        Err(source) => return Err(AuditError::Key { path, source }),
    };
    f.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| AuditError::Key { path, source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn key_is_created_0600_with_its_public_key_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.key");
        let k = load_or_create_key(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.trim().len(), 64);
        let pub_path = public_key_path(&p);
        assert_eq!(pub_path, dir.path().join("audit.key.pub"));
        assert_eq!(read_public_key(&pub_path).unwrap(), k.verifying_key());
        // The same key on the next start.
        let again = load_or_create_key(&p).unwrap();
        assert_eq!(again.to_bytes(), k.to_bytes());
        // A missing .pub is written again.
        std::fs::remove_file(&pub_path).unwrap();
        load_or_create_key(&p).unwrap();
        assert_eq!(read_public_key(&pub_path).unwrap(), k.verifying_key());
    }

    #[test]
    fn key_readable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.key");
        load_or_create_key(&p).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create_key(&p).unwrap_err();
            assert!(matches!(e, AuditError::KeyMode { mode: m, .. } if m == mode), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()) && msg.contains(&format!("{mode:04o}")), "{msg}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        load_or_create_key(&p).unwrap();
    }

    #[test]
    fn bad_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap()
            .write_all(b"xyz\n")
            .unwrap();
        assert!(matches!(load_or_create_key(&p), Err(AuditError::KeyFormat { .. })));
        // A .pub that is not this key's.
        let q = dir.path().join("q");
        load_or_create_key(&q).unwrap();
        std::fs::write(public_key_path(&q), format!("{}\n", "11".repeat(32))).unwrap();
        assert!(matches!(load_or_create_key(&q), Err(AuditError::PublicKeyMismatch { .. })));
        assert!(matches!(read_public_key(&p), Err(AuditError::KeyFormat { .. })));
    }

    #[test]
    fn checkpoint_message_is_the_documented_text() {
        let h = "ab".repeat(32);
        assert_eq!(checkpoint_message(41, &h), format!("agentmon-audit-checkpoint/1\n41\n{h}").into_bytes());
    }
}
