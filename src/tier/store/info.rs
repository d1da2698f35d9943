//! INFO in standalone mode: a `cacheside` section and Redis's `Keyspace` section.

use super::{now_ms, Store};
use crate::protocol::reply::{self, Proto};
use crate::protocol::Request;
use bytes::{BufMut, BytesMut};

impl Store {
    /// INFO: a `cacheside` section and Redis's `Keyspace` section; a verbatim string in RESP3.
    pub(super) async fn info(&self, req: &Request, proto: Proto, o: &mut BytesMut) {
        self.cache.run_pending_tasks().await;
        let wants = |section: &str| {
            req.argc() == 1
                || (1..req.argc()).any(|i| {
                    ["all", "default", "everything", section]
                        .iter()
                        .any(|s| req.arg_is(i, s))
                })
        };
        let keys = self.entry_count();
        let mut sections = Vec::new();
        if wants("cacheside") {
            let used = self.weighted_size();
            sections.push(format!(
                "# cacheside\r\nmode:standalone\r\nused_memory:{used}\r\nkeys:{keys}\r\n"
            ));
        }
        if wants("keyspace") {
            let mut text = "# Keyspace\r\n".to_string();
            if keys > 0 {
                // INFO is rare: one pass over the entries counts those with a deadline.
                let now = now_ms();
                let expires = self
                    .cache
                    .iter()
                    .filter(|(_, v)| v.deadline.is_some() && v.live_at(now))
                    .count();
                text.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
            }
            sections.push(text);
        }
        let text = sections.join("\r\n");
        match proto {
            Proto::Resp2 => reply::bulk(o, text.as_bytes()),
            Proto::Resp3 => {
                o.put_u8(b'=');
                o.put_slice((text.len() + 4).to_string().as_bytes());
                o.put_slice(b"\r\ntxt:");
                o.put_slice(text.as_bytes());
                o.put_slice(b"\r\n");
            }
        }
    }
}
