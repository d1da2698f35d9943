//! `hot.broadcast_encoding = "packed"`: the keys of an announcement as one string, each key
//! written as the length of the prefix it shares with the key before it, the length of the rest,
//! and the rest (front coding; lengths as LEB128 varints).
//!
//! Redis copies every announcement to every subscriber, so at fleet scale its bytes are most of
//! what a write costs it. Keys of one namespace, sorted (as batched announcements are), share
//! long prefixes: `product:10231` after `product:10227` costs 2 + 2 bytes here instead of the
//! 20 of a RESP bulk string.

/// Packs `keys` (in any order; sorted packs smaller).
pub fn pack(keys: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.as_ref().len() / 2 + 2).sum());
    let mut prev: &[u8] = &[];
    for k in keys {
        let k = k.as_ref();
        let shared = prev.iter().zip(k).take_while(|(a, b)| a == b).count();
        varint(&mut out, shared);
        varint(&mut out, k.len() - shared);
        out.extend_from_slice(&k[shared..]);
        prev = k;
    }
    out
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint from the front of `b`: at most 4 bytes (keys are far shorter than 2^28).
fn read_varint(b: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    for i in 0..4 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// Unpacks what [`pack`] made, calling `f` with each key in order. Stops at the first malformed
/// entry (a shared prefix longer than the key before it, a length past the end) and returns
/// false then: what a broken or foreign message holds is not trusted further. Keys are built in
/// one buffer no longer than the longest key.
pub fn unpack(mut b: &[u8], mut f: impl FnMut(&[u8])) -> bool {
    let mut key: Vec<u8> = Vec::new();
    while !b.is_empty() {
        let (Some(shared), Some(rest)) = (read_varint(&mut b), read_varint(&mut b)) else {
            return false;
        };
        if shared > key.len() || rest > b.len() {
            return false;
        }
        key.truncate(shared);
        key.extend_from_slice(&b[..rest]);
        b = &b[rest..];
        f(&key);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        assert!(unpack(&pack(keys), |k| got.push(k.to_vec())));
        got
    }

    #[test]
    fn keys_come_back_in_order_and_sorted_keys_pack_small() {
        let mut keys: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("key:{:012}", (i * 7919) % 100_000).into_bytes())
            .collect();
        assert_eq!(round_trip(&keys), keys);
        keys.sort();
        assert_eq!(round_trip(&keys), keys);
        let resp: usize = keys.iter().map(|k| k.len() + 5 + 2).sum();
        assert!(
            pack(&keys).len() * 3 < resp,
            "{} vs {resp}",
            pack(&keys).len()
        );
    }

    #[test]
    fn edge_keys_round_trip() {
        let long = vec![b'x'; 70_000];
        let keys = vec![
            vec![],
            b"a".to_vec(),
            b"a".to_vec(),
            b"ab\r\n\0".to_vec(),
            long.clone(),
            [&long[..], b"y"].concat(),
            b"b".to_vec(),
            vec![],
        ];
        assert_eq!(round_trip(&keys), keys);
        assert!(unpack(&[], |_| panic!("no key in an empty packing")));
    }

    #[test]
    fn malformed_packings_stop_without_panicking() {
        // A prefix longer than the key before it; a length past the end; a varint that does
        // not end; a varint too long.
        for bad in [
            &[3u8, 1, b'a'][..],
            &[0, 5, b'a'],
            &[0],
            &[0x80],
            &[0xff, 0xff, 0xff, 0xff, 0x01, 0],
        ] {
            let mut n = 0;
            assert!(!unpack(bad, |_| n += 1), "{bad:?}");
            assert_eq!(n, 0, "{bad:?}");
        }
        // Arbitrary bytes: never a panic, never a key longer than the input.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            unpack(&bytes, |k| assert!(k.len() <= bytes.len()));
        }
    }
}
