//! Deterministic pseudo-random bytes for large-body tests.
//!
//! Byte `i` of the pattern depends only on `i` (word `i / 8` of a splitmix64 sequence), so a
//! sender and a checker agree on the content whatever chunk sizes either side uses, and
//! neither has to keep the whole body in memory.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The default chunk size used when streaming the pattern (64 KiB).
pub const CHUNK: usize = 64 * 1024;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` bytes of the pattern starting at byte `offset`.
pub fn bytes_at(offset: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut pos = offset;
    let end = offset + len as u64;
    while pos < end {
        let word = splitmix64(pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let take = (8 - start).min((end - pos) as usize);
        out.extend_from_slice(&word[start..start + take]);
        pos += take as u64;
    }
    Bytes::from(out)
}

/// Hex SHA-256 of the first `len` bytes of the pattern, computed chunk by chunk.
pub fn sha256_hex(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        hasher.update(bytes_at(offset, n));
        offset += n as u64;
    }
    hex(&hasher.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _infallible = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_does_not_depend_on_chunking() {
        let whole = bytes_at(0, 1000);
        let mut pieces = Vec::new();
        let mut offset = 0;
        for size in [1, 7, 8, 13, 100, 871] {
            pieces.extend_from_slice(&bytes_at(offset, size));
            offset += size as u64;
        }
        assert_eq!(&whole[..], &pieces[..]);
    }

    #[test]
    fn the_hash_matches_hashing_the_bytes_at_once() {
        let len = 3 * CHUNK as u64 + 5;
        let direct = hex(&Sha256::digest(bytes_at(0, len as usize)));
        assert_eq!(sha256_hex(len), direct);
    }
}
