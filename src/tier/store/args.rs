//! Redis's argument grammar for the store: `string2ll` integers, SET/GETEX options, and expire
//! arguments turned into absolute deadlines, with Redis's error texts.

use crate::protocol::Request;

pub(super) const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// Redis's `string2ll`: optional '-', no '+', no leading zeros or spaces, at most 20 bytes.
pub(super) fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 || s == b"-0" {
        return None;
    }
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty()
        || (digits[0] == b'0' && digits.len() > 1)
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The unit and base of an expire argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExpireKind {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// The options of SET (and, with `set == false`, of GETEX) as Redis's
/// `parseExtendedStringArgumentsOrReply` accepts them.
#[derive(Debug, Default)]
pub(super) struct SetOptions {
    pub(super) nx: bool,
    pub(super) xx: bool,
    pub(super) get: bool,
    pub(super) keep_ttl: bool,
    pub(super) persist: bool,
    pub(super) expire: Option<(ExpireKind, usize)>,
}

impl SetOptions {
    pub(super) fn parse(req: &Request, start: usize, set: bool) -> Option<Self> {
        let mut o = Self::default();
        let mut j = start;
        while j < req.argc() {
            // EX/PX/EXAT/PXAT: not after KEEPTTL, PERSIST or another unit, and a value follows.
            let expire_ok = |o: &Self, k| {
                !o.keep_ttl
                    && !o.persist
                    && o.expire.is_none_or(|(e, _)| e == k)
                    && j + 1 < req.argc()
            };
            if req.arg_is(j, "NX") && !o.xx && set {
                o.nx = true;
            } else if req.arg_is(j, "XX") && !o.nx && set {
                o.xx = true;
            } else if req.arg_is(j, "GET") && set {
                o.get = true;
            } else if req.arg_is(j, "KEEPTTL") && !o.persist && o.expire.is_none() && set {
                o.keep_ttl = true;
            } else if req.arg_is(j, "PERSIST") && !set && o.expire.is_none() && !o.keep_ttl {
                o.persist = true;
            } else {
                let kind = [
                    ("EX", ExpireKind::Ex),
                    ("PX", ExpireKind::Px),
                    ("EXAT", ExpireKind::ExAt),
                    ("PXAT", ExpireKind::PxAt),
                ]
                .into_iter()
                .find(|&(word, k)| req.arg_is(j, word) && expire_ok(&o, k))?
                .1;
                j += 1;
                o.expire = Some((kind, j));
            }
            j += 1;
        }
        Some(o)
    }
}

/// Redis's `getExpireMillisecondsOrReply`: the absolute deadline for an expire argument, or the
/// error text. Only positive times are valid.
pub(super) fn deadline(
    arg: &[u8],
    kind: ExpireKind,
    command: &str,
    now: i64,
) -> Result<i64, String> {
    let invalid = || format!("ERR invalid expire time in '{command}' command");
    let mut ms = parse_i64(arg).ok_or_else(|| NOT_INTEGER.to_string())?;
    let seconds = matches!(kind, ExpireKind::Ex | ExpireKind::ExAt);
    if ms <= 0 || (seconds && ms > i64::MAX / 1000) {
        return Err(invalid());
    }
    if seconds {
        ms *= 1000;
    }
    if matches!(kind, ExpireKind::Ex | ExpireKind::Px) {
        ms = ms.checked_add(now).ok_or_else(invalid)?;
    }
    Ok(ms)
}
