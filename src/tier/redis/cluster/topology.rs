//! The cluster's slot map: which primary serves each slot, read from `CLUSTER SHARDS` (or
//! `CLUSTER SLOTS` on servers older than 7), and the one-off queries that read it.

use super::slot::SLOTS;
use crate::error::UpstreamError;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::encode_command;
use crate::protocol::scan::Value;
use crate::tier::redis::conn::{self, Handshake};
use crate::tier::redis::Settings;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// No slot served: the cluster is missing a shard (or the map is not known yet).
const NONE: u16 = u16::MAX;

/// The primaries (sorted by address, so their order is stable across refreshes) and the
/// primary of each slot, as an index into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub primaries: Vec<Arc<str>>,
    slots: Vec<u16>,
    /// Each primary's online replicas (by the primary's index), for `upstream.read_from`.
    pub replicas: Vec<Vec<Arc<str>>>,
}

impl Topology {
    /// The primary serving `slot`, if one does.
    pub fn node_of(&self, slot: u16) -> Option<usize> {
        match self.slots.get(slot as usize) {
            Some(&n) if n != NONE => Some(n as usize),
            _ => None,
        }
    }

    /// Whether the primary at `addr` serves `slot`.
    pub fn serves(&self, slot: u16, addr: &str) -> bool {
        self.node_of(slot)
            .and_then(|n| self.primaries.get(n))
            .is_some_and(|a| &**a == addr)
    }

    /// Builds the map from (first slot, last slot, primary address) ranges.
    pub(super) fn from_ranges(ranges: Vec<(u16, u16, Arc<str>)>) -> Option<Self> {
        let mut primaries: Vec<Arc<str>> = ranges.iter().map(|r| r.2.clone()).collect();
        primaries.sort();
        primaries.dedup();
        if primaries.is_empty() || primaries.len() >= NONE as usize {
            return None;
        }
        let mut slots = vec![NONE; SLOTS];
        for (first, last, addr) in ranges {
            let idx = primaries.binary_search(&addr).ok()? as u16;
            if first > last || last as usize >= SLOTS {
                return None;
            }
            slots[first as usize..=last as usize].fill(idx);
        }
        let replicas = vec![Vec::new(); primaries.len()];
        Some(Self {
            primaries,
            slots,
            replicas,
        })
    }

    /// Adds (primary, replica) pairs; a replica of an unknown primary is left out.
    fn with_replicas(mut self, pairs: Vec<(Arc<str>, Arc<str>)>) -> Self {
        for (primary, replica) in pairs {
            if let Ok(i) = self.primaries.binary_search(&primary) {
                if !self.replicas[i].contains(&replica) {
                    self.replicas[i].push(replica);
                }
            }
        }
        for r in &mut self.replicas {
            r.sort();
        }
        self
    }

    /// Reads a `CLUSTER SHARDS` reply (RESP2); `asked` is the node that answered, whose host
    /// stands in for an empty announced address.
    pub fn from_shards(reply: &[u8], asked: &str, tls: bool) -> Option<Self> {
        let (v, _) = Value::parse(reply, Proto::Resp2)?;
        let (mut ranges, mut pairs) = (Vec::new(), Vec::new());
        for shard in v.items()? {
            let (mut bounds, mut primary, mut replicas) = (Vec::new(), None, Vec::new());
            let mut fields = shard.items()?;
            while let (Some(k), Some(val)) = (fields.next(), fields.next()) {
                match k.string()? {
                    b"slots" => {
                        for b in val.items()? {
                            bounds.push(u16::try_from(b.integer()?).ok()?);
                        }
                    }
                    b"nodes" => {
                        for node in val.items()? {
                            match shard_node(node, asked, tls) {
                                Some((true, addr)) => primary = Some(addr),
                                Some((false, addr)) => replicas.push(addr),
                                None => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(addr) = primary {
                for pair in bounds.chunks(2) {
                    if let [first, last] = pair {
                        ranges.push((*first, *last, addr.clone()));
                    }
                }
                pairs.extend(replicas.into_iter().map(|r| (addr.clone(), r)));
            }
        }
        Some(Self::from_ranges(ranges)?.with_replicas(pairs))
    }

    /// Reads a `CLUSTER SLOTS` reply (RESP2): `[first, last, [host, port, id, ...], replicas...]`.
    pub fn from_slots(reply: &[u8], asked: &str) -> Option<Self> {
        let (v, _) = Value::parse(reply, Proto::Resp2)?;
        let (mut ranges, mut pairs) = (Vec::new(), Vec::new());
        for range in v.items()? {
            let mut it = range.items()?;
            let first = u16::try_from(it.next()?.integer()?).ok()?;
            let last = u16::try_from(it.next()?.integer()?).ok()?;
            let mut node = it.next()?.items()?;
            let host = node.next()?.string()?;
            let port = node.next()?.integer()?;
            let primary = address(host, port, asked)?;
            for replica in it {
                let mut node = replica.items()?;
                let (host, port) = (node.next()?.string()?, node.next()?.integer()?);
                pairs.push((primary.clone(), address(host, port, asked)?));
            }
            ranges.push((first, last, primary));
        }
        Some(Self::from_ranges(ranges)?.with_replicas(pairs))
    }
}

/// A shard's node if it is online: whether it is the primary, and its address.
fn shard_node(node: Value<'_>, asked: &str, tls: bool) -> Option<(bool, Arc<str>)> {
    let (mut host, mut ip, mut port, mut tls_port) = (None, None, None, None);
    let (mut primary, mut online) = (false, false);
    let mut fields = node.items()?;
    while let (Some(k), Some(val)) = (fields.next(), fields.next()) {
        match k.string()? {
            b"endpoint" => host = val.string(),
            b"ip" => ip = val.string(),
            b"port" => port = val.integer(),
            b"tls-port" => tls_port = val.integer(),
            b"role" => primary = val.string() == Some(b"master"),
            b"health" => online = val.string() == Some(b"online"),
            _ => {}
        }
    }
    if !online {
        return None;
    }
    // The endpoint is what the node announces for clients (`cluster-preferred-endpoint-type`);
    // `?` means it has none to give.
    let host = host.filter(|h| !h.is_empty() && *h != b"?").or(ip)?;
    let port = if tls { tls_port.or(port) } else { port }?;
    Some((primary, address(host, port, asked)?))
}

/// `host:port` (`[host]:port` for IPv6); an empty host is the node that was asked.
fn address(host: &[u8], port: i64, asked: &str) -> Option<Arc<str>> {
    let port = u16::try_from(port).ok()?;
    let host = std::str::from_utf8(host).ok()?;
    let host = if host.is_empty() {
        asked.rsplit_once(':')?.0.to_string()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(format!("{host}:{port}").into())
}

/// Sends one command on a connection of its own and returns its reply (RESP2).
pub async fn query(
    settings: &Settings,
    addr: &Arc<str>,
    args: &[&str],
) -> Result<BytesMut, UpstreamError> {
    let hs = Handshake {
        settings,
        proto: Proto::Resp2,
        client_name: None,
        readonly: false,
    };
    let work = async {
        let mut stream = conn::open(&hs, addr, settings.connect_timeout).await?;
        let io_err = |e: std::io::Error| conn::io_failure(settings, addr, e);
        stream
            .write_all(&encode_command(args))
            .await
            .map_err(io_err)?;
        stream.flush().await.map_err(io_err)?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            if stream.read_buf(&mut buf).await.map_err(io_err)? == 0 {
                return Err(UpstreamError::Closed { addr: addr.clone() });
            }
            let framed = reply::frame(&buf, Proto::Resp2).map_err(|e| UpstreamError::Protocol {
                addr: addr.clone(),
                detail: e.to_string().into(),
            })?;
            if let Some(f) = framed {
                return Ok(buf.split_to(f.len));
            }
        }
    };
    let limit = settings.connect_timeout + settings.command_timeout;
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(UpstreamError::Timeout {
            addr: addr.clone(),
            after: limit,
        })
    })
}

/// Whether the node at `addr` runs in cluster mode (`INFO cluster` says `cluster_enabled:1`).
pub async fn cluster_enabled(settings: &Settings, addr: &Arc<str>) -> Result<bool, UpstreamError> {
    let reply = query(settings, addr, &["INFO", "cluster"]).await?;
    let text = Value::parse(&reply, Proto::Resp2)
        .and_then(|(v, _)| v.string())
        .unwrap_or_default();
    Ok(memchr::memmem::find(text, b"cluster_enabled:1").is_some())
}

/// Reads the slot map from the node at `addr`.
pub async fn fetch(settings: &Settings, addr: &Arc<str>) -> Result<Topology, UpstreamError> {
    let invalid = |what: &str| UpstreamError::Protocol {
        addr: addr.clone(),
        detail: format!("unreadable {what} reply").into(),
    };
    let reply = query(settings, addr, &["CLUSTER", "SHARDS"]).await?;
    if reply.first() != Some(&b'-') {
        return Topology::from_shards(&reply, addr, settings.tls.is_some())
            .ok_or_else(|| invalid("CLUSTER SHARDS"));
    }
    // Redis 6 and older have only CLUSTER SLOTS.
    let reply = query(settings, addr, &["CLUSTER", "SLOTS"]).await?;
    if let Some((v, _)) = Value::parse(&reply, Proto::Resp2) {
        if let Some(e) = v.error() {
            return Err(UpstreamError::Handshake {
                addr: addr.clone(),
                detail: String::from_utf8_lossy(e).into_owned().into(),
            });
        }
    }
    Topology::from_slots(&reply, addr).ok_or_else(|| invalid("CLUSTER SLOTS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk_or_int(out: &mut Vec<u8>, s: &str) {
        match s.parse::<i64>() {
            Ok(n) if !s.is_empty() => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            _ => out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes()),
        }
    }

    fn node(ip: &str, port: &str, role: &str, health: &str) -> Vec<u8> {
        let mut out = b"*12\r\n".to_vec();
        for f in [
            "id", "abc", "port", port, "ip", ip, "endpoint", ip, "role", role, "health", health,
        ] {
            bulk_or_int(&mut out, f);
        }
        out
    }

    #[test]
    fn shards_map_every_slot_to_its_online_primary() {
        let mut reply = b"*2\r\n".to_vec();
        for (slots, port, replica) in [
            (["0", "99", "200", "16383"], "7001", "7004"),
            (["100", "199", "", ""], "7002", "7005"),
        ] {
            reply.extend_from_slice(b"*4\r\n$5\r\nslots\r\n");
            let slots: Vec<&str> = slots.into_iter().filter(|s| !s.is_empty()).collect();
            reply.extend_from_slice(format!("*{}\r\n", slots.len()).as_bytes());
            for s in slots {
                bulk_or_int(&mut reply, s);
            }
            reply.extend_from_slice(b"$5\r\nnodes\r\n*2\r\n");
            reply.extend(node("127.0.0.1", replica, "replica", "online"));
            reply.extend(node("", port, "master", "online"));
        }
        let t = Topology::from_shards(&reply, "10.0.0.9:7000", false).unwrap();
        assert_eq!(t.primaries.len(), 2);
        assert_eq!(&*t.primaries[t.node_of(0).unwrap()], "10.0.0.9:7001");
        assert_eq!(&*t.primaries[t.node_of(150).unwrap()], "10.0.0.9:7002");
        assert_eq!(&*t.primaries[t.node_of(16383).unwrap()], "10.0.0.9:7001");
        let of = |slot| &t.replicas[t.node_of(slot).unwrap()];
        assert_eq!(
            of(0).iter().map(|a| &**a).collect::<Vec<_>>(),
            ["127.0.0.1:7004"]
        );
        assert_eq!(
            of(150).iter().map(|a| &**a).collect::<Vec<_>>(),
            ["127.0.0.1:7005"]
        );
    }

    #[test]
    fn slots_reply_and_garbage() {
        let reply = b"*1\r\n*4\r\n:0\r\n:16383\r\n*3\r\n$3\r\n::1\r\n:7000\r\n$2\r\nid\r\n*3\r\n$0\r\n\r\n:7003\r\n$2\r\nid\r\n";
        let t = Topology::from_slots(reply, "x:1").unwrap();
        assert_eq!(&*t.primaries[0], "[::1]:7000");
        assert_eq!(&*t.replicas[0][0], "x:7003");
        assert_eq!(t.node_of(5), Some(0));
        assert!(Topology::from_slots(b"*1\r\n:1\r\n", "x:1").is_none());
        assert!(Topology::from_shards(b"-ERR unknown\r\n", "x:1", false).is_none());
        assert!(Topology::from_shards(b"*0\r\n", "x:1", false).is_none());
    }
}
