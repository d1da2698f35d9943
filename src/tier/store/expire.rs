//! Key expiry: EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT with Redis 7's options and error texts.

use super::args::{parse_i64, NOT_INTEGER};
use super::{now_ms, Store, Value};
use crate::protocol::reply;
use crate::protocol::Request;
use bytes::BytesMut;
use moka::ops::compute::Op;

impl Store {
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT with NX/XX/GT/LT, as Redis's `expireGenericCommand`.
    pub(super) async fn expire(&self, req: &Request, name: &str, o: &mut BytesMut) {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for i in 3..req.argc() {
            match req.arg(i).to_ascii_lowercase().as_slice() {
                b"nx" => nx = true,
                b"xx" => xx = true,
                b"gt" => gt = true,
                b"lt" => lt = true,
                _ => {
                    // Redis formats the option with %s: it ends at a NUL.
                    let opt = req.arg(i).split(|&c| c == 0).next().unwrap_or_default();
                    let opt = String::from_utf8_lossy(opt);
                    return reply::error(o, &format!("ERR Unsupported option {opt}"));
                }
            }
        }
        if nx && (xx || gt || lt) {
            return reply::error(
                o,
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            );
        }
        if gt && lt {
            return reply::error(
                o,
                "ERR GT and LT options at the same time are not compatible",
            );
        }
        let Some(mut when) = parse_i64(req.arg(2)) else {
            return reply::error(o, NOT_INTEGER);
        };
        let invalid = format!("ERR invalid expire time in '{name}' command");
        if !name.starts_with('p') {
            match when.checked_mul(1000) {
                Some(ms) => when = ms,
                None => return reply::error(o, &invalid),
            }
        }
        if !name.ends_with("at") {
            match when.checked_add(now_ms()) {
                Some(at) => when = at,
                None => return reply::error(o, &invalid),
            }
        }
        let n = self
            .modify(req.arg(1), |cur| {
                let Some(v) = cur else {
                    return (Op::Nop, 0);
                };
                let refused = (nx && v.deadline.is_some())
                    || (xx && v.deadline.is_none())
                    || (gt && v.deadline.is_none_or(|c| when <= c))
                    || (lt && v.deadline.is_some_and(|c| when >= c));
                if refused {
                    return (Op::Nop, 0);
                }
                // A deadline in the past deletes the key (modify removes a dead value).
                (Op::Put(Value::new(v.data, Some(when))), 1)
            })
            .await;
        reply::integer(o, n);
    }
}
