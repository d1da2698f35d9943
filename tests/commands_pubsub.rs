//! Pub/sub through cacheside: channel and pattern subscribers, RESP3 push messages, raw frames.

mod support;

use futures::StreamExt;
use redis::{PushKind, Value};
use std::collections::HashMap;
use support::commands::{q, start, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_and_pattern_subscribers_receive_what_another_client_publishes() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;
    let pubsub = within(
        "connect pubsub",
        redis::Client::open(proxy.url()).unwrap().get_async_pubsub(),
    )
    .await
    .expect("pubsub through cacheside");
    let (mut sink, mut stream) = pubsub.split();
    within("SUBSCRIBE", sink.subscribe("ps:news"))
        .await
        .unwrap();
    within("PSUBSCRIBE", sink.psubscribe("ps:ev.*"))
        .await
        .unwrap();

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:news", "hello"]).await,
        1
    );
    let m = within("message", stream.next()).await.expect("a message");
    assert_eq!(m.get_channel_name(), "ps:news");
    assert_eq!(m.get_payload::<String>().unwrap(), "hello");
    assert!(!m.from_pattern());

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:ev.login", "ada"]).await,
        1
    );
    let m = within("pmessage", stream.next()).await.expect("a pmessage");
    assert!(m.from_pattern());
    assert_eq!(m.get_pattern::<String>().unwrap(), "ps:ev.*");
    assert_eq!(m.get_channel_name(), "ps:ev.login");
    assert_eq!(m.get_payload::<String>().unwrap(), "ada");

    // Binary payloads arrive intact.
    let payload: Vec<u8> = (0..=255u8).collect();
    let n: i64 = within(
        "PUBLISH binary",
        redis::cmd("PUBLISH")
            .arg("ps:news")
            .arg(&payload)
            .query_async(&mut publisher),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let m = within("binary message", stream.next()).await.unwrap();
    assert_eq!(m.get_payload_bytes(), &payload[..]);

    // After UNSUBSCRIBE the channel has no subscriber; the pattern still works.
    within("UNSUBSCRIBE", sink.unsubscribe("ps:news"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:news", "nobody"]).await,
        0
    );
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:ev.logout", "bye"]).await,
        1
    );
    let m = within("pmessage after unsubscribe", stream.next())
        .await
        .unwrap();
    assert_eq!(m.get_channel_name(), "ps:ev.logout");
    assert_eq!(m.get_payload::<String>().unwrap(), "bye");

    within("PUNSUBSCRIBE", sink.punsubscribe("ps:ev.*"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:ev.login", "nobody"]).await,
        0
    );
    // And the pubsub connection still answers.
    let pong: String = within("PING in pubsub", sink.ping()).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscribers_receive_push_messages_and_can_still_run_commands() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut sub = within(
        "connect RESP3",
        redis::Client::open(format!("{}?protocol=resp3", proxy.url()))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .expect("RESP3 client through cacheside");

    within("SUBSCRIBE", sub.subscribe("r3:chan")).await.unwrap();
    within("PSUBSCRIBE", sub.psubscribe("r3:pat.*"))
        .await
        .unwrap();

    // Returns the next push of `kind`, skipping subscribe confirmations.
    async fn next_push(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        kind: PushKind,
    ) -> Vec<Value> {
        loop {
            let p = within("push", rx.recv()).await.expect("push channel open");
            if p.kind == kind {
                return p.data;
            }
            assert!(
                matches!(
                    p.kind,
                    PushKind::Subscribe
                        | PushKind::PSubscribe
                        | PushKind::Unsubscribe
                        | PushKind::PUnsubscribe
                ),
                "unexpected push while waiting for {kind:?}: {p:?}"
            );
        }
    }

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:chan", "one"]).await,
        1
    );
    let data = next_push(&mut rx, PushKind::Message).await;
    assert_eq!(
        data,
        vec![
            Value::BulkString(b"r3:chan".to_vec()),
            Value::BulkString(b"one".to_vec())
        ]
    );

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:pat.x", "two"]).await,
        1
    );
    let data = next_push(&mut rx, PushKind::PMessage).await;
    assert_eq!(
        data,
        vec![
            Value::BulkString(b"r3:pat.*".to_vec()),
            Value::BulkString(b"r3:pat.x".to_vec()),
            Value::BulkString(b"two".to_vec())
        ]
    );

    // RESP3 allows ordinary commands on a subscribed connection; replies and pushes interleave.
    assert_eq!(q::<String, _>(&mut sub, &["SET", "r3:k", "v"]).await, "OK");
    assert_eq!(q::<String, _>(&mut sub, &["GET", "r3:k"]).await, "v");
    assert_eq!(
        q::<Option<String>, _>(&mut sub, &["GET", "r3:absent"]).await,
        None
    );
    assert_eq!(
        q::<HashMap<String, String>, _>(&mut sub, &["HGETALL", "r3:absent"]).await,
        HashMap::new()
    );
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:chan", "three"]).await,
        1
    );
    let data = next_push(&mut rx, PushKind::Message).await;
    assert_eq!(data[1], Value::BulkString(b"three".to_vec()));
    assert_eq!(q::<String, _>(&mut sub, &["GET", "r3:k"]).await, "v");

    within("UNSUBSCRIBE", sub.unsubscribe("r3:chan"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:chan", "gone"]).await,
        0
    );
    within("PUNSUBSCRIBE", sub.punsubscribe("r3:pat.*"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:pat.x", "gone"]).await,
        0
    );
    assert_eq!(q::<String, _>(&mut sub, &["GET", "r3:k"]).await, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_subscriber_gets_the_exact_message_frames() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;
    let mut raw = proxy.raw().await;

    raw.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nraw:ch\r\n").await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$6\r\nraw:ch\r\n:1\r\n")
        .await;

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "raw:ch", "hi there"]).await,
        1
    );
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$6\r\nraw:ch\r\n$8\r\nhi there\r\n")
        .await;

    let n: i64 = within(
        "PUBLISH crlf",
        redis::cmd("PUBLISH")
            .arg("raw:ch")
            .arg(&b"a\r\nb\0"[..])
            .query_async(&mut publisher),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$6\r\nraw:ch\r\n$5\r\na\r\nb\0\r\n")
        .await;

    // Two subscriptions in one command: one confirmation each.
    raw.send(b"*3\r\n$9\r\nSUBSCRIBE\r\n$5\r\nraw:a\r\n$5\r\nraw:b\r\n")
        .await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nraw:a\r\n:2\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nraw:b\r\n:3\r\n")
        .await;
    raw.send(b"*1\r\n$4\r\nPING\r\n").await;
    raw.expect(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").await;

    raw.send(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n").await;
    // One confirmation per channel, in redis-server's (unspecified) order, counting down to 0.
    let frame_len = |ch: &str| {
        format!(
            "*3\r\n$11\r\nunsubscribe\r\n${}\r\n{ch}\r\n:0\r\n",
            ch.len()
        )
        .len()
    };
    let rest = raw
        .read_exact_len(frame_len("raw:ch") + frame_len("raw:a") + frame_len("raw:b"))
        .await;
    let text = String::from_utf8_lossy(&rest);
    for ch in ["raw:ch", "raw:a", "raw:b"] {
        assert!(text.contains(ch), "UNSUBSCRIBE confirmations: {text:?}");
    }
    assert!(
        text.ends_with(":0\r\n"),
        "UNSUBSCRIBE confirmations: {text:?}"
    );
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "raw:ch", "gone"]).await,
        0
    );

    // Out of subscribed mode, the connection takes ordinary commands again.
    raw.send(b"*1\r\n$4\r\nPING\r\n").await;
    raw.expect(b"+PONG\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$6\r\nraw:kk\r\n$1\r\n1\r\n")
        .await;
    raw.expect(b"+OK\r\n").await;
}
