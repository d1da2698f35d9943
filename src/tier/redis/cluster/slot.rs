//! Hash slots: CRC16 (XMODEM) of the key, or of its `{hash tag}`, mod 16384, as Redis Cluster
//! computes them.

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot a key belongs to.
pub fn of(key: &[u8]) -> u16 {
    (crc16(hashed_part(key)) as usize % SLOTS) as u16
}

/// The part of the key that is hashed: the text between the first `{` and the first `}` after
/// it, if that text is not empty; otherwise the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = memchr::memchr(b'{', key) else {
        return key;
    };
    match memchr::memchr(b'}', &key[open + 1..]) {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        // The standard check input for CRC-16/XMODEM (and the Redis Cluster spec's example).
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.
        assert_eq!(of(b"foo"), 12182);
        assert_eq!(of(b"bar"), 5061);
        assert_eq!(of(b"hello"), 866);
        assert_eq!(of(b""), 0);
        assert_eq!(of(b"{user1000}.following"), of(b"{user1000}.followers"));
        assert_eq!(of(b"{user1000}.following"), of(b"user1000"));
    }

    #[test]
    fn hash_tags_follow_the_first_brace_pair_rules() {
        // An empty tag hashes the whole key.
        assert_eq!(
            of(b"foo{}{bar}"),
            (crc16(b"foo{}{bar}") as usize % SLOTS) as u16
        );
        // Only the first `{` and the first `}` after it count.
        assert_eq!(of(b"foo{{bar}}zap"), of(b"{bar"));
        assert_eq!(of(b"foo{bar}{zap}"), of(b"bar"));
        // No closing brace: the whole key.
        assert_eq!(of(b"foo{bar"), (crc16(b"foo{bar") as usize % SLOTS) as u16);
        // Binary keys never panic.
        assert!((of(&[0xff, b'{', 0x00, b'}']) as usize) < SLOTS);
    }
}
