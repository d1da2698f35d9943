//! Keeping the hot tiers of a fleet of sidecars coherent with writes they did not make.
//!
//! - tracking: a RESP3 connection with `CLIENT TRACKING ON BCAST PREFIX ...` for the cached
//!   prefixes; Redis pushes an invalidation for every write to a matching key, by any client.
//! - broadcast: for upstreams that refuse CLIENT TRACKING (ElastiCache Redis OSS does): each
//!   sidecar publishes the keys its writes touched on a channel, and all of them subscribe.
//! - auto: tracking if the upstream accepts it, broadcast otherwise.
//!
//! While the connection is down the tier is emptied and bypassed: what was missed is unknown.
//!
//! Over TLS (`rediss://`) the session decrypts whole records: bytes can be off the kernel socket,
//! where `HotTier::invalidations_pending` peeks, yet not applied, sitting in rustls as plaintext
//! or as the first part of a record. Rather than teach the tier about TLS sessions, this task
//! keeps the tier's `applying` flag raised whenever the session holds such bytes (see `next`):
//! bytes leave the kernel only with the flag raised, and it is lowered only when neither the read
//! buffer nor the session holds anything unapplied. So "socket not empty or flag raised" still
//! means exactly "invalidations may be pending", as on plain TCP. The price is a hit going
//! upstream while the tail of a record is on its way, as it does for the tail of a frame.

use super::channels::Subscriptions;
use super::settings::Coherence;
use super::{subscribe, HotTier};
use crate::error::UpstreamError;
use crate::metrics::InvalidationSource;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::encode_command;
use crate::protocol::scan::Value;
use crate::tier::redis::conn::{self, Handshake};
use crate::tier::redis::{Settings, Upstream};
use crate::transport::Stream;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a coherence connection ended.
pub(super) enum End {
    /// The upstream refused CLIENT TRACKING (or RESP3): try broadcast instead.
    Refused(String),
    Lost(UpstreamError),
    /// ElastiCache IAM: the connection is near its 12-hour limit and is replaced.
    Reauth,
    /// A config reload changed the rules' prefixes: tracking starts again with the new ones.
    Retrack,
}

/// Starts keeping `tier` coherent in `mode`. In `ttl` mode nothing listens and the tier is
/// usable at once.
///
/// On a Redis Cluster (`upstream`'s, known when a connection is opened) only broadcast keeps a
/// tier coherent, on a shard channel (see [`Broadcast::shard`]): `auto` goes straight to it, and
/// `tracking` is refused (one connection per primary would be needed, and the invalidation
/// fence watches one socket).
pub fn spawn(tier: Arc<HotTier>, upstream: Arc<Upstream>, mode: Coherence, channel: String) {
    let settings = upstream.settings_arc();
    if tier.relay && mode != Coherence::Ttl && mode != Coherence::Tracking {
        // Contends for the fleet's relay once broadcast runs (see `relay`).
        tokio::spawn(super::relay::run(
            tier.clone(),
            upstream.clone(),
            settings.clone(),
        ));
    }
    tokio::spawn(async move {
        if mode == Coherence::Ttl {
            tier.set_coherent(true).await;
            tracing::info!("hot tier: coherence by TTL only");
            return;
        }
        let mut tracking = matches!(mode, Coherence::Auto | Coherence::Tracking);
        let id: Bytes = format!("{:016x}", rand::random::<u64>()).into();
        let mut attempt: u32 = 0;
        loop {
            let cluster = upstream.cluster().cloned();
            if cluster.is_some() && tracking {
                if mode == Coherence::Auto {
                    tracing::info!("the upstream is a Redis Cluster: hot tier coherence by broadcast on a shard channel");
                    tracking = false;
                } else {
                    tier.set_coherent(false).await;
                    tracing::error!("hot.coherence = \"tracking\" does not work on a Redis Cluster; hot tier bypassed (set \"broadcast\" or \"auto\")");
                    return;
                }
            }
            tier.tracking
                .store(tracking, std::sync::atomic::Ordering::SeqCst);
            let subs = Subscriptions::of(&tier.rules());
            if !tracking && tier.per_prefix && subs.pattern && cluster.is_some() {
                // Shard channels have no patterns: a rule that can match any namespace cannot
                // hear every namespace's writes. Bypassed until the rules change.
                tier.set_coherent(false).await;
                tracing::error!("hot.channel_per_prefix on a Redis Cluster needs every [[cache]] rule to name its namespace (\"ns:...\"); hot tier bypassed");
                tier.retrack.notified().await;
                continue;
            }
            let run = async {
                if tracking {
                    run_tracking(&tier, &settings).await
                } else {
                    let c = cluster.as_ref();
                    subscribe::run_broadcast(&tier, &settings, c, &channel, &id, &subs).await
                }
            };
            // A subscribed RESP2 connection cannot AUTH again, so under IAM this connection is
            // replaced before ElastiCache's limit instead; the tier is flushed meanwhile, as
            // after any reconnect (once every 10 to 11 hours). With channel_per_prefix, new
            // rules that need other channels restart broadcast as they restart tracking.
            let end = tokio::select! {
                end = run => end,
                _ = reauth_deadline(&settings) => End::Reauth,
                () = tier.retrack.notified(), if tracking || tier.per_prefix => End::Retrack,
            };
            if tier.is_coherent() {
                attempt = 0;
            }
            tier.watch_socket(None);
            tier.set_coherent(false).await;
            match end {
                End::Refused(why) if mode == Coherence::Auto => {
                    tracing::info!(reason = %why, "upstream refuses CLIENT TRACKING; hot tier coherence falls back to broadcast");
                    tracking = false;
                    continue;
                }
                End::Refused(why) => {
                    tracing::warn!(reason = %why, "CLIENT TRACKING refused; hot tier bypassed (set hot.coherence = \"broadcast\" or \"auto\")")
                }
                End::Lost(e) => {
                    tier.metrics.upstream_failure(e.failure());
                    tracing::warn!(error = %e, "hot tier invalidation connection lost; tier flushed and bypassed until it is back")
                }
                End::Reauth => {
                    tracing::info!(
                        "hot tier invalidation connection replaced to authenticate again (IAM)"
                    );
                    attempt = 0;
                    continue;
                }
                End::Retrack if !tracking => {
                    tracing::info!("cache rules changed: broadcast subscribes again to the channels of their namespaces");
                    attempt = 0;
                    continue;
                }
                End::Retrack => {
                    tracing::info!(
                        "cache rules changed: CLIENT TRACKING starts again with their prefixes"
                    );
                    attempt = 0;
                    continue;
                }
            }
            let delay = settings
                .reconnect_min
                .saturating_mul(1 << attempt.min(10))
                .min(settings.reconnect_max);
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    });
}

/// Resolves when an IAM-authenticated connection opened now should be replaced; never without IAM.
async fn reauth_deadline(settings: &Settings) {
    match &settings.iam {
        Some(iam) => tokio::time::sleep(iam.reauth_delay()).await,
        None => std::future::pending().await,
    }
}

/// Gives the tier a duplicate of the socket to peek at (see `HotTier::invalidations_pending`);
/// under TLS, the TCP socket under the session.
pub(super) fn watch(tier: &HotTier, stream: &Stream) {
    let dup = socket2::SockRef::from(stream.tcp())
        .try_clone()
        .ok()
        .map(std::net::TcpStream::from)
        .filter(|s| s.set_nonblocking(true).is_ok());
    tier.watch_socket(dup);
}

pub(super) async fn open(
    settings: &Settings,
    addr: &Arc<str>,
    proto: Proto,
) -> Result<Stream, End> {
    let hs = Handshake {
        settings,
        proto,
        client_name: Some(b"cacheside-invalidation"),
        readonly: false,
    };
    match conn::open(&hs, addr, settings.connect_timeout).await {
        // An upstream without HELLO 3 cannot track for us (a wrong password is no such sign;
        // an ACL that forbids HELLO is).
        Err(UpstreamError::Handshake { detail, .. }) if proto == Proto::Resp3 => {
            Err(End::Refused(detail.to_string()))
        }
        Err(UpstreamError::Auth { detail, .. })
            if proto == Proto::Resp3 && detail.starts_with("NOPERM") =>
        {
            Err(End::Refused(detail.to_string()))
        }
        Err(e) => Err(End::Lost(e)),
        Ok(s) => Ok(s),
    }
}

/// The BCAST prefixes covering every rule: the literal prefix of each pattern, with prefixes
/// that another one already covers dropped (Redis refuses overlapping prefixes). Empty: all keys.
pub(super) fn prefixes(rules: &[Arc<super::Rule>]) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = rules
        .iter()
        .map(|r| r.pattern.literal_prefix().to_vec())
        .collect();
    if all.iter().any(|p| p.is_empty()) {
        return Vec::new();
    }
    all.sort();
    all.dedup();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for p in all {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    kept
}

/// Sends one command and reads its reply frame.
async fn call(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cmd: &[u8],
    proto: Proto,
    addr: &Arc<str>,
) -> Result<(Bytes, bool), End> {
    stream.write_all(cmd).await.map_err(|e| lost(addr, e))?;
    stream.flush().await.map_err(|e| lost(addr, e))?;
    loop {
        if let Some(f) = reply::frame(buf, proto).map_err(|e| End::Lost(protocol(addr, e)))? {
            let is_err = f.kind == reply::ReplyKind::Error;
            return Ok((buf.split_to(f.len).freeze(), is_err));
        }
        if stream.read_buf(buf).await.map_err(|e| lost(addr, e))? == 0 {
            return Err(End::Lost(UpstreamError::Closed { addr: addr.clone() }));
        }
    }
}

pub(super) fn lost(addr: &Arc<str>, e: std::io::Error) -> End {
    End::Lost(UpstreamError::Unavailable {
        addr: addr.clone(),
        detail: e.to_string().into(),
    })
}

pub(super) fn protocol(addr: &Arc<str>, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Protocol {
        addr: addr.clone(),
        detail: e.to_string().into(),
    }
}

async fn run_tracking(tier: &HotTier, settings: &Settings) -> End {
    let addr: Arc<str> = settings.url.addr().into();
    let mut stream = match open(settings, &addr, Proto::Resp3).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut args: Vec<Vec<u8>> = vec![
        b"CLIENT".to_vec(),
        b"TRACKING".to_vec(),
        b"ON".to_vec(),
        b"BCAST".to_vec(),
    ];
    for p in prefixes(&tier.rules()) {
        args.push(b"PREFIX".to_vec());
        args.push(p);
    }
    let mut buf = BytesMut::with_capacity(16 * 1024);
    match call(
        &mut stream,
        &mut buf,
        &encode_command(&args),
        Proto::Resp3,
        &addr,
    )
    .await
    {
        Ok((_, false)) => {}
        Ok((err, true)) => return End::Refused(String::from_utf8_lossy(&err).trim().to_string()),
        Err(e) => return e,
    }
    watch(tier, &stream);
    // Frames that came with the CLIENT TRACKING reply are applied first: the flag is raised
    // before the tier turns coherent, so no hit is served before they are.
    let mut applying = tier.applying();
    tier.set_coherent(true).await;
    tracing::info!(upstream = %addr, "hot tier coherent: CLIENT TRACKING (BCAST) on");
    loop {
        while let Some(f) = match reply::frame(&buf, Proto::Resp3) {
            Ok(f) => f,
            Err(e) => return End::Lost(protocol(&addr, e)),
        } {
            let bytes = buf.split_to(f.len);
            if let Some((frame, _)) = Value::parse(&bytes, Proto::Resp3) {
                apply_tracking(tier, frame).await;
            }
        }
        applying = match next(applying, &mut stream, &mut buf, tier, &addr).await {
            Ok(guard) => guard,
            Err(end) => return end,
        };
    }
}

/// Reads more after the complete frames in `buf` were applied. Bytes already off the socket
/// and not applied yet (a partial frame in `buf`; over TLS, part of a record or decrypted
/// plaintext inside the session) keep the flag raised (hits wait) until they are read and applied.
pub(super) async fn next<'t>(
    applying: super::Applying<'t>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    tier: &'t HotTier,
    addr: &Arc<str>,
) -> Result<super::Applying<'t>, End> {
    if buf.is_empty() && !stream.holds_unread() {
        drop(applying);
        return take(stream, buf, tier, addr).await;
    }
    loop {
        stream.readable().await.map_err(|e| lost(addr, e))?;
        match stream.try_read_buf(buf) {
            Ok(0) => return Err(End::Lost(UpstreamError::Closed { addr: addr.clone() })),
            Ok(_) => return Ok(applying),
            // Over TLS the socket may have held the rest of a record that carried no data (a
            // session ticket): nothing is left to wait for with the flag raised.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if buf.is_empty() && !stream.holds_unread() {
                    return Ok(applying);
                }
            }
            Err(e) => return Err(lost(addr, e)),
        }
    }
}

/// Waits for the socket, then takes what it holds with the tier's `applying` flag raised, which
/// is returned raised: the caller applies what was taken before releasing it, so a checker never
/// finds invalidations gone from the socket but not yet applied.
async fn take<'t>(
    stream: &mut Stream,
    buf: &mut BytesMut,
    tier: &'t HotTier,
    addr: &Arc<str>,
) -> Result<super::Applying<'t>, End> {
    loop {
        stream.readable().await.map_err(|e| lost(addr, e))?;
        let applying = tier.applying();
        match stream.try_read_buf(buf) {
            Ok(0) => return Err(End::Lost(UpstreamError::Closed { addr: addr.clone() })),
            Ok(_) => return Ok(applying),
            // The first part of a TLS record went into the session: it is held like a partial
            // frame, with the flag raised, until the rest arrives.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && stream.holds_unread() => {
                return Ok(applying)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(lost(addr, e)),
        }
    }
}

/// `>2 invalidate [key ...]`, or `>2 invalidate (null)` when Redis flushed everything.
async fn apply_tracking(tier: &HotTier, frame: Value<'_>) {
    if frame.bytes().first() != Some(&b'>') {
        return;
    }
    let Some(mut it) = frame.items() else {
        return;
    };
    if it.next().and_then(|v| v.string()) != Some(&b"invalidate"[..]) {
        return;
    }
    match it.next() {
        Some(v) if v.is_null() => tier.invalidate_all(InvalidationSource::Flush).await,
        Some(v) => {
            for k in v.items().into_iter().flatten() {
                if let Some(key) = k.string() {
                    tier.invalidate(key, InvalidationSource::Tracking).await;
                }
            }
        }
        None => {}
    }
}
