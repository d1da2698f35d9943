//! CLIENT LIST, INFO and KILL answer about cacheside's own clients (cacheside is the server
//! they talk to) and never list or kill the upstream connections those clients share.

mod support;

use std::time::Duration;
use support::{Proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn text(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_and_info_show_cacheside_clients_with_their_names() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("alpha")
        .query_async(&mut a)
        .await
        .unwrap();
    let _: () = redis::cmd("SELECT")
        .arg(3)
        .query_async(&mut b)
        .await
        .unwrap();
    let a_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut a)
        .await
        .unwrap();
    let list = text(&mut b, &["CLIENT", "LIST"]).await;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "exactly the two clients of cacheside: {list}"
    );
    let alpha = lines
        .iter()
        .find(|l| field(l, "name") == Some("alpha"))
        .expect("alpha listed");
    assert_eq!(field(alpha, "id"), Some(a_id.to_string().as_str()));
    assert_eq!(field(alpha, "laddr"), Some(proxy.addr.to_string().as_str()));
    let other = lines
        .iter()
        .find(|l| field(l, "name") == Some(""))
        .expect("b listed");
    assert_eq!(field(other, "db"), Some("3"));
    assert_eq!(field(other, "cmd"), Some("client|list"));
    let alpha_cmd = field(alpha, "cmd").unwrap();
    assert_eq!(alpha_cmd, "client", "a's last command");
    let info = text(&mut a, &["CLIENT", "INFO"]).await;
    assert_eq!(field(info.trim_end(), "name"), Some("alpha"));
    assert!(info.ends_with('\n'));
    let only = text(&mut a, &["CLIENT", "LIST", "ID", &a_id.to_string()]).await;
    assert_eq!(only.lines().count(), 1);
    let pubsub = text(&mut a, &["CLIENT", "LIST", "TYPE", "pubsub"]).await;
    assert_eq!(pubsub, "");
    let err = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("bogus")
        .query_async::<String>(&mut a)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Unknown client type 'bogus'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_closes_cacheside_clients_and_spares_shared_connections() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut killer = proxy.client().await;
    let mut bystander = proxy.client().await;
    let mut victim = proxy.raw().await;
    victim.send(b"CLIENT ID\r\n").await;
    let line = String::from_utf8(victim.read_exact_len(4).await).unwrap();
    let victim_id: i64 = line.trim_start_matches(':').trim().parse().unwrap();
    // A slow command of the bystander is in flight on a shared connection meanwhile.
    let slow = tokio::spawn(async move {
        let r: redis::RedisResult<String> = redis::cmd("EVAL")
            .arg("local t = redis.call('TIME'); local s = t[1] * 1000000 + t[2]; repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > 200000; return 'done'")
            .arg(0)
            .query_async(&mut bystander)
            .await;
        (r, bystander)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(victim_id)
        .query_async(&mut killer)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), victim.0.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the killed client's connection is closed");
    // Everyone else of type normal, but not the killer (SKIPME yes by default).
    let n: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut killer)
        .await
        .unwrap();
    assert_eq!(n, 1, "the bystander");
    let (r, _) = slow.await.unwrap();
    // The bystander's own connection was closed by the kill; what must not happen is a shared
    // upstream connection dying under other clients. The killer still works, through the
    // same shared connections.
    let _ = r;
    let pong: String = redis::cmd("PING").query_async(&mut killer).await.unwrap();
    assert_eq!(pong, "PONG");
    let mut fresh = proxy.client().await;
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut fresh)
        .await
        .unwrap();
    assert_eq!(v, None);
    let mut direct = redis.direct().await;
    let upstream = text(&mut direct, &["CLIENT", "LIST"]).await;
    assert!(
        upstream.lines().count() >= 3,
        "cacheside's shared connections are still up: {upstream}"
    );
    // The old form answers +OK or Redis's error.
    let err = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("127.0.0.1:1")
        .query_async::<()>(&mut killer)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No such client"), "{err}");
    let mut raw = proxy.raw().await;
    raw.send(b"CLIENT KILL SKIPME no ID 999999\r\n").await;
    raw.expect(b":0\r\n").await;
    raw.send(b"CLIENT KILL ID 0\r\n").await;
    raw.expect(b"-ERR client-id should be greater than 0\r\n")
        .await;
    let mut s = raw.0;
    s.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_redirect_names_a_cacheside_client_by_its_client_id() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    // redis-py's RESP2 client-side caching: a subscriber connection gives its CLIENT ID, and
    // the data connection redirects its invalidations there.
    let mut sub = proxy.raw().await;
    sub.send(b"CLIENT ID\r\n").await;
    let id_line = String::from_utf8(sub.read_exact_len(4).await).unwrap();
    let id = id_line.trim_start_matches(':').trim().to_string();
    sub.send(b"SUBSCRIBE __redis__:invalidate\r\n").await;
    sub.expect(b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n")
        .await;
    let mut data = proxy.raw().await;
    data.send(format!("CLIENT TRACKING ON REDIRECT {id}\r\n").as_bytes())
        .await;
    data.expect(b"+OK\r\n").await;
    data.send(b"GET tracked\r\n").await;
    data.expect(b"$-1\r\n").await;
    let mut writer = proxy.client().await;
    let _: () = redis::cmd("SET")
        .arg("tracked")
        .arg("1")
        .query_async(&mut writer)
        .await
        .unwrap();
    sub.expect(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$7\r\ntracked\r\n")
        .await;
    // A client that does not exist (or has no connection of its own upstream) is refused as
    // Redis refuses it.
    data.send(b"CLIENT TRACKING ON REDIRECT 999999\r\n").await;
    data.expect(b"-ERR The client ID you want redirect to does not exist\r\n")
        .await;
}
