//! Subscribed-mode edge cases, each as redis-server behaves: UNSUBSCRIBE with no subscriptions,
//! QUIT and RESET on subscribed connections, reply order on a RESP3 subscribed connection.

mod support;

use std::time::Duration;
use support::commands::{
    direct_raw, hello3, q, read_until_suffix, read_up_to, resp, start, within,
};
use support::{Proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// UNSUBSCRIBE (and PUNSUBSCRIBE/SUNSUBSCRIBE) from a client that is not subscribed gets one
/// reply per channel, as from redis-server, and never an extra frame that a shared connection
/// could hand to the next request queued on it (here another client's GET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_from_several_channels_never_leaks_a_reply_to_another_client() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    // One shared connection, so the three clients' requests queue on it in a known order.
    let proxy = Proxy::start_with(&redis.url(), |c| c.upstream.connections = 1).await;
    let mut d = redis.direct().await;
    q::<String, _>(&mut d, &["SET", "leak:secret", "secret"]).await;
    let mut b = proxy.raw().await;
    let mut a = proxy.raw().await;
    let mut c = proxy.raw().await;

    // B holds the shared connection for a moment so that A's and C's requests queue behind it.
    b.send(&resp(&[b"DEBUG", b"SLEEP", b"0.5"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send(&resp(&[b"UNSUBSCRIBE", b"a", b"b"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&resp(&[b"GET", b"leak:secret"])).await;
    b.expect(b"+OK\r\n").await;

    let want_a: &[u8] = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n\
                          *3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n";
    let want_c: &[u8] = b"$6\r\nsecret\r\n";
    let got_c = read_up_to(&mut c.0, want_c.len(), Duration::from_secs(3)).await;
    let got_a = read_up_to(&mut a.0, want_a.len(), Duration::from_secs(3)).await;
    assert_eq!(
        (
            String::from_utf8_lossy(&got_a),
            String::from_utf8_lossy(&got_c)
        ),
        (
            String::from_utf8_lossy(want_a),
            String::from_utf8_lossy(want_c)
        ),
        "(client A's replies, client C's reply)"
    );
}

/// A RESP3 client's UNSUBSCRIBE while not subscribed gets its own push reply; the next reply on
/// the shared connection (another client's GET) still goes to that other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_unsubscribe_without_subscriptions_gets_its_own_reply_not_another_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| c.upstream.connections = 1).await;
    let mut d = redis.direct().await;
    q::<String, _>(&mut d, &["SET", "leak3:secret", "secret"]).await;

    // redis-server's own answer.
    let mut direct = direct_raw(&redis).await;
    hello3(&mut direct).await;
    direct.write_all(&resp(&[b"UNSUBSCRIBE"])).await.unwrap();
    let want_a = read_until_suffix(&mut direct, b":0\r\n").await;
    assert_eq!(want_a, b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");

    let mut a = proxy.raw().await;
    let mut c = proxy.raw().await;
    hello3(&mut a.0).await;
    hello3(&mut c.0).await;
    a.send(&resp(&[b"UNSUBSCRIBE"])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(&resp(&[b"GET", b"leak3:secret"])).await;
    let want_c: &[u8] = b"$6\r\nsecret\r\n";
    let got_a = read_up_to(&mut a.0, want_a.len(), Duration::from_secs(3)).await;
    let got_c = read_up_to(&mut c.0, want_c.len(), Duration::from_secs(3)).await;
    assert_eq!(
        (
            String::from_utf8_lossy(&got_a),
            String::from_utf8_lossy(&got_c)
        ),
        (
            String::from_utf8_lossy(&want_a),
            String::from_utf8_lossy(want_c)
        ),
        "(client A's UNSUBSCRIBE reply, client C's GET reply)"
    );
}

/// QUIT on a subscribed connection answers what was sent before it, then +OK, then closes, as
/// redis-server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_on_a_subscribed_connection_answers_pending_requests_and_ok_before_closing() {
    let (redis, proxy) = start().await;
    let mut seq = resp(&[b"SUBSCRIBE", b"quit:ch"]);
    seq.extend(resp(&[b"PING"]));
    seq.extend(resp(&[b"QUIT"]));

    let mut direct = direct_raw(&redis).await;
    direct.write_all(&seq).await.unwrap();
    let mut want = Vec::new();
    within("direct QUIT", direct.read_to_end(&mut want))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&want),
        "*3\r\n$9\r\nsubscribe\r\n$7\r\nquit:ch\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n+OK\r\n"
    );

    let mut raw = proxy.raw().await;
    raw.send(&seq).await;
    let got = raw.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// On a RESP3 subscribed connection the SUBSCRIBE confirmation push counts as its reply, so a
/// reply cacheside answers itself (AUTH's +OK) comes before the reply to the PING sent after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_a_resp3_subscribed_connection_stay_in_request_order() {
    let (_redis, proxy) = start().await;
    let mut raw = proxy.raw().await;
    hello3(&mut raw.0).await;
    raw.send(&resp(&[b"SUBSCRIBE", b"ord:ch"])).await;
    raw.expect(b">3\r\n$9\r\nsubscribe\r\n$6\r\nord:ch\r\n:1\r\n")
        .await;
    // No requirepass on cacheside: AUTH is accepted locally (+OK).
    raw.send(&[resp(&[b"AUTH", b"pw"]), resp(&[b"PING"])].concat())
        .await;
    let got = read_up_to(&mut raw.0, 12, Duration::from_secs(3)).await;
    assert_eq!(String::from_utf8_lossy(&got), "+OK\r\n+PONG\r\n");
}

/// RESET on a RESP3 subscribed connection answers +RESET and leaves subscribed mode, as
/// redis-server does: the channel has no subscriber left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_a_resp3_subscribed_connection_answers_and_leaves_subscribed_mode() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;
    let mut raw = proxy.raw().await;
    hello3(&mut raw.0).await;
    raw.send(&resp(&[b"SUBSCRIBE", b"rst:ch"])).await;
    raw.expect(b">3\r\n$9\r\nsubscribe\r\n$6\r\nrst:ch\r\n:1\r\n")
        .await;
    raw.send(&resp(&[b"RESET"])).await;
    let got = read_up_to(&mut raw.0, 8, Duration::from_secs(3)).await;
    assert_eq!(String::from_utf8_lossy(&got), "+RESET\r\n");
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "rst:ch", "x"]).await,
        0
    );
    raw.send(&resp(&[b"PING"])).await;
    raw.expect(b"+PONG\r\n").await;
}
