//! A cheap hasher for the glue's per-request maps (context ids, counter names).
//!
//! Why: std's default SipHash-1-3 costs hundreds of Wasm instructions per lookup, and each
//! request does several (context create, request headers, delete, counters). The keys are ours
//! or the host's (context ids it counts up, counter names we define), never a client's, so
//! hash flooding does not apply and a multiplicative hash (FxHash's scheme) suffices.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// Multiply-rotate hashing of words; not for keys a client chooses.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            for (dst, src) in w.iter_mut().zip(rest) {
                *dst = *src;
            }
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_distinct_keys_apart() {
        let mut ids: FastMap<u32, u32> = FastMap::default();
        for i in 0..10_000u32 {
            ids.insert(i * 2 + 1, i);
        }
        assert_eq!(ids.len(), 10_000);
        assert_eq!(ids.get(&19_999), Some(&9_999));
        assert_eq!(ids.get(&2), None);
        let mut names: FastMap<String, u32> = FastMap::default();
        for (i, n) in ["allowed", "denied", "denied_ip_denied", "dry_run_denied_ip_denied", "a", "", "allowed_"].iter().enumerate() {
            names.insert((*n).to_owned(), i as u32);
        }
        assert_eq!(names.len(), 7);
        assert_eq!(names.get("allowed_"), Some(&6));
        assert_eq!(names.get(""), Some(&5));
        assert_eq!(names.get("allowe"), None);
    }
}
