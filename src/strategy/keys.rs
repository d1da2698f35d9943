//! Names of cacheside's own keys that must live in the same hash slot as a client's key.

use bytes::{Bytes, BytesMut};

/// `prefix` + `key`, hashed to `key`'s slot: a key with its own hash tag (`{...}` with
/// something inside) keeps it; any other key becomes the tag (`prefix{key}`), since Redis
/// hashes a tagless key whole. (A tagless key that contains `}` cannot be wrapped into the same
/// slot; on a cluster, counters name their pending deltas with `slot::companion`, which gives
/// the same name for every other key.)
pub(crate) fn tagged(prefix: &[u8], key: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() + key.len() + 2);
    out.extend_from_slice(prefix);
    if has_tag(key) {
        out.extend_from_slice(key);
    } else {
        out.extend_from_slice(b"{");
        out.extend_from_slice(key);
        out.extend_from_slice(b"}");
    }
    out.freeze()
}

/// Whether Redis Cluster hashes `key` by a tag: a `{` followed, later, by a `}` with at least
/// one byte between them.
fn has_tag(key: &[u8]) -> bool {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return false;
    };
    matches!(key[open + 1..].iter().position(|&b| b == b'}'), Some(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_keys_share_the_client_keys_slot() {
        assert_eq!(
            &tagged(b"p:", b"product:1:views")[..],
            b"p:{product:1:views}"
        );
        assert_eq!(
            &tagged(b"p:", b"product:{1}:views")[..],
            b"p:product:{1}:views"
        );
    }
}
