//! Topic names on the append path: handed to a shard without an allocation, and looked up
//! there without a keyed hash.
//!
//! Every append names its topic. Allocating an `Arc<str>` per append (freed on the shard, a
//! cross-thread free) and hashing the name with SipHash on the shard were 8% of a shard's time
//! under single-message appends.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Longest name carried inline; longer ones (up to the 249 bytes a name may have) are shared.
const INLINE_BYTES: usize = 46;

/// A topic name as a command carries it.
#[derive(Debug, Clone)]
pub(crate) enum TopicName {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Shared(Arc<str>),
}

impl TopicName {
    pub(crate) fn new(name: &str) -> Self {
        match u8::try_from(name.len()) {
            Ok(len) if name.len() <= INLINE_BYTES => {
                let mut bytes = [0; INLINE_BYTES];
                bytes[..name.len()].copy_from_slice(name.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Shared(Arc::from(name)),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `str` in `new`, so always UTF-8; the empty name no topic has
            // stands in for the impossible.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Shared(name) => name,
        }
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a of `bytes`: stable across runs and versions, and quick on short names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continued(FNV_OFFSET_BASIS, bytes)
}

fn fnv1a_continued(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// A [`Hasher`] running [`fnv1a`] over what it is fed.
///
/// Unkeyed, so a client choosing names could make them collide; only topics that exist are
/// in the map, and creating them is an administrative request.
pub(crate) struct Fnv1aHasher(u64);

impl Default for Fnv1aHasher {
    fn default() -> Self {
        Self(FNV_OFFSET_BASIS)
    }
}

impl Hasher for Fnv1aHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_continued(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`Fnv1aHasher`]s, for maps looked up on every append.
pub(crate) type Fnv1aBuild = BuildHasherDefault<Fnv1aHasher>;

/// A map keyed by topic name.
pub(crate) type TopicMap<V> = HashMap<Arc<str>, V, Fnv1aBuild>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_every_length_come_back_unchanged() {
        for len in [1, 2, 45, 46, 47, 100, 249] {
            let name: String = "abcdefghij._-0123456789"
                .chars()
                .cycle()
                .take(len)
                .collect();
            let carried = TopicName::new(&name);
            assert_eq!(carried.as_str(), name);
            assert_eq!(
                matches!(carried, TopicName::Inline { .. }),
                len <= INLINE_BYTES,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_map_finds_names_by_str() {
        let mut map = TopicMap::default();
        map.insert(Arc::from("orders"), 1);
        map.insert(Arc::from("orders2"), 2);
        assert_eq!(map.get("orders"), Some(&1));
        assert_eq!(map.get("orders2"), Some(&2));
        assert_eq!(map.get("order"), None);
    }
}
