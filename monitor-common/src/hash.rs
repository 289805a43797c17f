//! Hashes of sensitive basenames. The kernel filters read-only opens by the hash of
//! the file's basename (exact name), of its extension (`*.pem`) or of its first N
//! bytes (`id_*`), looked up in the `SENSITIVE` map; userspace fills that map and
//! then matches the full glob on the resolved path. Both sides must hash alike, so
//! the function lives here.

pub const SEED_EXACT: u64 = 0xcbf2_9ce4_8422_2325;
pub const SEED_EXT: u64 = 0x8422_2325_cbf2_9ce4;
pub const SEED_PREFIX: u64 = 0x9ce4_8422_cbf2_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// One FNV-1a step.
#[inline(always)]
pub const fn step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(PRIME)
}

/// FNV-1a of `bytes` from `seed`.
pub const fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    let mut i = 0;
    while i < bytes.len() {
        h = step(h, bytes[i]);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_separate_kinds() {
        assert_ne!(fnv(SEED_EXACT, b".env"), fnv(SEED_EXT, b".env"));
        assert_ne!(fnv(SEED_EXACT, b"id_"), fnv(SEED_PREFIX, b"id_"));
        assert_eq!(fnv(SEED_EXACT, b"ab"), step(step(SEED_EXACT, b'a'), b'b'));
    }
}
