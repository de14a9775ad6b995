//! The hash every proxy instance computes the same way: xxHash64, seed 0.

/// Hash of a hash-policy key (header value, cookie, source IP, query parameter): xxh64, seed 0.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// Combine two hashes (several hash policies on one route), as Envoy does: rotate and xor.
pub fn combine(acc: u64, next: u64) -> u64 {
    acc.rotate_left(1) ^ next
}

#[cfg(test)]
mod tests {
    #[test]
    fn xxh64_seed0_known_values() {
        // Reference values of xxHash64 with seed 0.
        assert_eq!(super::hash_key(b""), 0xef46db3751d8e999);
        assert_eq!(super::hash_key(b"a"), 0xd24ec4f1a98c6e5b);
    }
}
