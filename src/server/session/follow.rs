//! Cluster mode: a blocking command (BLPOP, BLMOVE, XREAD BLOCK, ...), or a client's first
//! WATCH, redirected on the client's pinned connection is sent again where the cluster says, as
//! shared connections do for every other command. A slot that moves while the command waits (resharding, scaling)
//! ends the wait with `-MOVED`; a client that does not speak the cluster protocol would take
//! that for an error, so cacheside opens the connection at the slot's new primary and sends the
//! command again, with what is left of its timeout.

use super::run::Dest;
use super::{Session, Stop};
use crate::error::ProxyError;
use crate::protocol::reply::Expect;
use crate::protocol::request::encode_command;
use crate::protocol::{CommandInfo, Pin, Request, Route};
use crate::router::ReplyMode;
use crate::tier::redis::Redirected;
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

impl Session {
    /// Whether the request about to go on the pinned connection is a blocking command, or the
    /// first WATCH, whose redirections cacheside follows: in cluster mode, with a key, on a
    /// connection that holds no other state (no transaction, WATCH, subscription, CLIENT REPLY
    /// OFF), so the command can move to another node alone. A WATCH moved takes the client's
    /// connection with it: the transaction that follows runs where its keys are watched.
    pub(super) fn follows_redirects(&self, info: &CommandInfo, has_key: bool) -> bool {
        has_key
            && matches!(
                info.route,
                Route::Pin(Pin::Blocking | Pin::MaybeBlocking | Pin::Watch)
            )
            && !self.pinned_active
            && self.st.can_release()
            && self.st.reply_mode == ReplyMode::On
            && self.on_cluster()
    }

    /// Waits for the outcome of a blocking command sent with a watch (`Pinned::watch`); while
    /// its reply is a redirection, sends it again where told (a new pinned connection, after
    /// ASKING for `-ASK`, after a pause for `-TRYAGAIN`), at most as many times as shared
    /// connections follow one, then the client gets the last reply.
    pub(super) async fn follow_redirects(
        &mut self,
        mut rx: oneshot::Receiver<Redirected>,
        req: &Request,
        info: &CommandInfo,
        key: &[u8],
        started: Instant,
    ) -> Result<(), Stop> {
        for attempt in 1.. {
            // A reply relayed, or a connection lost (its error relayed): done.
            let Ok(redirected) = self.wait_reading(rx).await? else {
                return Ok(());
            };
            let Redirected { frame, work } = redirected;
            let cluster = self
                .ctx
                .upstream
                .as_ref()
                .and_then(|u| u.cluster())
                .cloned();
            let from = self.pinned.as_ref().map(|p| p.addr().clone());
            let hop = match (cluster, from) {
                (Some(c), Some(from)) => c.pinned_redirect(&frame, &from, attempt),
                _ => None,
            };
            let Some(hop) = hop else {
                for w in work {
                    w.await;
                }
                return self.reply(frame).await;
            };
            if !hop.pause.is_zero() {
                tokio::time::sleep(hop.pause).await;
            }
            if let Err(e) = self.enter_pinned(Some(key), Some(hop.addr)).await {
                for w in work {
                    w.await;
                }
                let reply = crate::error::reply_bytes(&ProxyError::Upstream(e));
                return self.reply(reply).await;
            }
            let command = with_remaining_timeout(req, info.name, started.elapsed());
            let Some(p) = &mut self.pinned else {
                return Ok(());
            };
            let mut bytes = BytesMut::with_capacity(command.len() + 20);
            if hop.asking {
                p.expect(Expect::Hidden);
                bytes.extend_from_slice(&encode_command(&["ASKING"]));
            }
            bytes.extend_from_slice(&command);
            match info.route {
                Route::Pin(Pin::Watch) => p.expect(Expect::Frames(1)),
                _ => p.expect_blocking(Expect::Frames(1)),
            }
            rx = p.watch();
            for w in work {
                p.before_reply(w);
            }
            self.send_to(Dest::Pinned, bytes.freeze(), 1, None).await?;
            // A WATCH keeps the connection for the transaction that follows.
            if self.st.can_release() {
                if let Some(p) = &mut self.pinned {
                    p.release();
                }
                self.pinned_active = false;
                self.release_pending = true;
            }
        }
        Ok(())
    }
}

/// `req` with its timeout less `elapsed` (the time it already waited on the node that
/// redirected it), so that the client waits no longer in all than it asked; a timeout of 0
/// (for ever), or one Redis would refuse, is sent as it was. One that ran out is sent as the
/// shortest wait (1 ms), so the node answers the timeout in its own words.
fn with_remaining_timeout(req: &Request, name: &str, elapsed: Duration) -> Bytes {
    let unchanged = || req.frame().clone();
    let (at, millis) = match name {
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" | "BRPOPLPUSH" | "BLMOVE" => {
            match req.argc().checked_sub(1) {
                Some(i) if i > 0 => (i, false),
                _ => return unchanged(),
            }
        }
        "BLMPOP" | "BZMPOP" => (1, false),
        "XREAD" | "XREADGROUP" => match block_option(req) {
            Some(i) => (i, true),
            None => return unchanged(),
        },
        _ => return unchanged(),
    };
    if at >= req.argc() {
        return unchanged();
    }
    let Some(asked) = std::str::from_utf8(req.arg(at))
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
    else {
        return unchanged();
    };
    let left = if millis {
        format!(
            "{}",
            (asked - elapsed.as_secs_f64() * 1000.0).ceil().max(1.0) as u64
        )
    } else {
        format!("{:.3}", (asked - elapsed.as_secs_f64()).max(0.001))
    };
    let args: Vec<&[u8]> = (0..req.argc())
        .map(|i| if i == at { left.as_bytes() } else { req.arg(i) })
        .collect();
    encode_command(&args)
}

/// The index of XREAD's / XREADGROUP's `BLOCK` milliseconds, if given before `STREAMS`.
fn block_option(req: &Request) -> Option<usize> {
    (1..req.argc())
        .take_while(|&i| !req.arg_is(i, "STREAMS"))
        .find(|&i| req.arg_is(i, "BLOCK"))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(b: &Bytes) -> Vec<String> {
        let text = String::from_utf8_lossy(b).to_string();
        // `*n`, then `$len` and the argument, for each argument.
        text.split("\r\n")
            .skip(2)
            .step_by(2)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn after(cmd: &[&str], elapsed_ms: u64) -> Vec<String> {
        let req = Request::from_args(cmd);
        args(&with_remaining_timeout(
            &req,
            cmd[0],
            Duration::from_millis(elapsed_ms),
        ))
    }

    #[test]
    fn a_timeout_in_seconds_loses_what_was_waited() {
        assert_eq!(
            after(&["BLPOP", "a", "b", "5"], 1500),
            ["BLPOP", "a", "b", "3.500"]
        );
        assert_eq!(
            after(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "2.5"], 500),
            ["BLMOVE", "a", "b", "LEFT", "RIGHT", "2.000"]
        );
        assert_eq!(
            after(&["BLMPOP", "3", "1", "a", "LEFT"], 1000),
            ["BLMPOP", "2.000", "1", "a", "LEFT"]
        );
    }

    #[test]
    fn for_ever_and_bad_timeouts_are_kept_and_one_run_out_is_the_shortest() {
        assert_eq!(after(&["BLPOP", "a", "0"], 9000), ["BLPOP", "a", "0"]);
        assert_eq!(after(&["BLPOP", "a", "soon"], 9000), ["BLPOP", "a", "soon"]);
        assert_eq!(after(&["BLPOP", "a", "-1"], 9000), ["BLPOP", "a", "-1"]);
        assert_eq!(after(&["BLPOP", "a", "1"], 9000), ["BLPOP", "a", "0.001"]);
    }

    #[test]
    fn xread_block_is_in_milliseconds_and_only_before_streams() {
        assert_eq!(
            after(
                &["XREAD", "COUNT", "2", "BLOCK", "1000", "STREAMS", "s", "$"],
                250
            ),
            ["XREAD", "COUNT", "2", "BLOCK", "750", "STREAMS", "s", "$"]
        );
        assert_eq!(
            after(&["XREAD", "BLOCK", "10", "STREAMS", "s", "$"], 250),
            ["XREAD", "BLOCK", "1", "STREAMS", "s", "$"]
        );
        assert_eq!(
            after(&["XREAD", "STREAMS", "BLOCK", "5"], 250),
            ["XREAD", "STREAMS", "BLOCK", "5"]
        );
        assert_eq!(
            after(
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "BLOCK",
                    "0",
                    "STREAMS",
                    "s",
                    ">"
                ],
                250
            ),
            [
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">"
            ]
        );
    }
}
