//! String commands with options or arithmetic: SET, GETEX, the INCR family and INCRBYFLOAT.

use super::args::{deadline, parse_i64, SetOptions, NOT_INTEGER};
use super::{float, now_ms, owned, Store, Value, NOT_FLOAT, SYNTAX};
use crate::protocol::reply::{self, Proto};
use crate::protocol::Request;
use bytes::{BufMut, Bytes, BytesMut};
use moka::ops::compute::Op;

impl Store {
    pub(super) async fn set(&self, req: &Request, proto: Proto, o: &mut BytesMut) {
        let Some(opts) = SetOptions::parse(req, 3, true) else {
            return reply::error(o, SYNTAX);
        };
        let at = match opts.expire {
            Some((kind, i)) => match deadline(req.arg(i), kind, "set", now_ms()) {
                Ok(at) => Some(at),
                Err(e) => return reply::error(o, &e),
            },
            None => None,
        };
        let data = owned(req, 2);
        self.modify(req.arg(1), |cur| {
            if opts.get {
                match &cur {
                    Some(v) => reply::bulk(o, &v.data),
                    None => reply::null(o, proto),
                }
            }
            if (opts.nx && cur.is_some()) || (opts.xx && cur.is_none()) {
                if !opts.get {
                    reply::null(o, proto);
                }
                return (Op::Nop, ());
            }
            if !opts.get {
                o.put_slice(reply::OK);
            }
            let at = if opts.keep_ttl {
                cur.and_then(|v| v.deadline)
            } else {
                at
            };
            (Op::Put(Value::new(data, at)), ())
        })
        .await;
    }

    pub(super) async fn getex(&self, req: &Request, proto: Proto, o: &mut BytesMut) {
        let Some(opts) = SetOptions::parse(req, 2, false) else {
            return reply::error(o, SYNTAX);
        };
        // As in Redis, the expire argument is only checked when the key exists.
        self.modify(req.arg(1), |cur| {
            let Some(v) = cur else {
                reply::null(o, proto);
                return (Op::Nop, ());
            };
            let at = match opts.expire {
                Some((kind, i)) => match deadline(req.arg(i), kind, "getex", now_ms()) {
                    Ok(at) => Some(at),
                    Err(e) => {
                        reply::error(o, &e);
                        return (Op::Nop, ());
                    }
                },
                None => None,
            };
            reply::bulk(o, &v.data);
            match at {
                Some(at) => (Op::Put(Value::new(v.data, Some(at))), ()),
                None if opts.persist && v.deadline.is_some() => {
                    (Op::Put(Value::new(v.data, None)), ())
                }
                None => (Op::Nop, ()),
            }
        })
        .await;
    }

    pub(super) async fn incr(&self, key: &[u8], by: i64, o: &mut BytesMut) {
        let r = self
            .modify(key, |cur| {
                let (old, at) = match &cur {
                    None => (0, None),
                    Some(v) => match parse_i64(&v.data) {
                        Some(n) => (n, v.deadline),
                        None => return (Op::Nop, Err(NOT_INTEGER)),
                    },
                };
                match old.checked_add(by) {
                    Some(n) => {
                        let data = Bytes::from(n.to_string());
                        (Op::Put(Value::new(data, at)), Ok(n))
                    }
                    None => (Op::Nop, Err("ERR increment or decrement would overflow")),
                }
            })
            .await;
        match r {
            Ok(n) => reply::integer(o, n),
            Err(e) => reply::error(o, e),
        }
    }

    pub(super) async fn incr_float(&self, key: &[u8], by: float::Num, o: &mut BytesMut) {
        let r = self
            .modify(key, |cur| {
                let (old, at) = match &cur {
                    None => (float::ZERO, None),
                    Some(v) => match float::parse(&v.data) {
                        Some(n) => (n, v.deadline),
                        None => return (Op::Nop, Err(NOT_FLOAT)),
                    },
                };
                match float::add(old, by) {
                    Some(sum) => {
                        let text = Bytes::from(float::format(sum));
                        (Op::Put(Value::new(text.clone(), at)), Ok(text))
                    }
                    None => (Op::Nop, Err("ERR increment would produce NaN or Infinity")),
                }
            })
            .await;
        match r {
            Ok(text) => reply::bulk(o, &text),
            Err(e) => reply::error(o, e),
        }
    }
}
