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

/// `prefix` + `key`, spelled so that it hashes to `key`'s slot: a companion key (a fill lease,
/// a "not found" marker) that a script can use beside `key` on a Redis Cluster. `prefix` must
/// hold no brace. A key with a hash tag keeps it (`prefix` + key); a key without `}` becomes
/// the tag itself (`prefix{key}`); any other key (an empty key, a `}` without a valid tag) is
/// preceded by a short tag chosen for its slot (`prefix{tag}key`).
pub fn companion(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    debug_assert!(!prefix.iter().any(|b| matches!(b, b'{' | b'}')));
    let mut out = Vec::with_capacity(prefix.len() + key.len() + 8);
    out.extend_from_slice(prefix);
    if hashed_part(key).len() != key.len() {
        out.extend_from_slice(key);
    } else if !key.is_empty() && memchr::memchr(b'}', key).is_none() {
        out.push(b'{');
        out.extend_from_slice(key);
        out.push(b'}');
    } else {
        out.push(b'{');
        out.extend_from_slice(slot_tag(of(key)).as_bytes());
        out.push(b'}');
        out.extend_from_slice(key);
    }
    out
}

/// A short brace-free text whose CRC16 falls in `slot`: the smallest such base-36 number,
/// found once for every slot on first use (about 170,000 CRCs of a few bytes each). A slot
/// past the last is taken modulo `SLOTS`.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut left = SLOTS;
        let mut n = 0u64;
        while left > 0 {
            let tag = base36(n);
            let s = crc16(tag.as_bytes()) as usize % SLOTS;
            if tags[s].is_empty() {
                tags[s] = tag;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[slot as usize % SLOTS]
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("ascii digits")
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
    fn companions_hash_to_their_keys_slot() {
        let keys: [&[u8]; 12] = [
            b"product:42",
            b"user:{42}:profile",
            b"{}",
            b"",
            b"a}b",
            b"{}x}",
            b"foo{bar",
            b"}",
            b"x{}{y}",
            b"{{a}}",
            &[0xff, b'}', 0x00],
            b"item:7:views",
        ];
        for key in keys {
            let c = companion(b"cacheside:lease:", key);
            assert_eq!(
                of(&c),
                of(key),
                "{:?} -> {:?}",
                key,
                String::from_utf8_lossy(&c)
            );
            assert!(c.starts_with(b"cacheside:lease:"));
            assert!(c.ends_with(key) || c.ends_with(&[key, b"}"].concat()));
        }
        assert_eq!(companion(b"p:", b"product:1"), b"p:{product:1}");
        assert_eq!(companion(b"p:", b"u:{1}:x"), b"p:u:{1}:x");
        for slot in [0u16, 1, 866, 12182, 16383] {
            assert_eq!(of(slot_tag(slot).as_bytes()), slot);
        }
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
