//! Streams through cacheside: XADD, consumer groups, pending entries and acknowledgements.

mod support;

use redis::FromRedisValue;
use std::time::{Duration, Instant};
use support::commands::{q, start, try_q, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumer_groups_deliver_track_and_acknowledge_entries() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let mut ids = Vec::new();
    for i in 0..3 {
        let id: String = q(&mut c, &["XADD", "st:orders", "*", "n", &i.to_string()]).await;
        ids.push(id);
    }
    assert_eq!(q::<i64, _>(&mut c, &["XLEN", "st:orders"]).await, 3);
    assert_eq!(
        q::<String, _>(&mut c, &["XGROUP", "CREATE", "st:orders", "workers", "0"]).await,
        "OK"
    );
    let err = try_q::<String, _>(&mut c, &["XGROUP", "CREATE", "st:orders", "workers", "0"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("BUSYGROUP"), "{err}");

    let read: redis::streams::StreamReadReply = q(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "alice",
            "COUNT",
            "10",
            "STREAMS",
            "st:orders",
            ">",
        ],
    )
    .await;
    assert_eq!(read.keys.len(), 1);
    assert_eq!(read.keys[0].key, "st:orders");
    let got: Vec<&str> = read.keys[0].ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let n: Vec<String> = read.keys[0]
        .ids
        .iter()
        .map(|e| String::from_redis_value(&e.map["n"]).unwrap())
        .collect();
    assert_eq!(n, ["0", "1", "2"]);

    let pending: redis::streams::StreamPendingReply =
        q(&mut c, &["XPENDING", "st:orders", "workers"]).await;
    assert_eq!(pending.count(), 3);
    match &pending {
        redis::streams::StreamPendingReply::Data(d) => {
            assert_eq!(d.start_id, ids[0]);
            assert_eq!(d.end_id, ids[2]);
            assert_eq!(d.consumers.len(), 1);
            assert_eq!(d.consumers[0].name, "alice");
            assert_eq!(d.consumers[0].pending, 3);
        }
        other => panic!("XPENDING: {other:?}"),
    }

    assert_eq!(
        q::<i64, _>(&mut c, &["XACK", "st:orders", "workers", &ids[0], &ids[1]]).await,
        2
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["XACK", "st:orders", "workers", &ids[0]]).await,
        0
    );
    let pending: redis::streams::StreamPendingReply =
        q(&mut c, &["XPENDING", "st:orders", "workers"]).await;
    assert_eq!(pending.count(), 1);

    // Nothing new for the group: a non-blocking read is nil.
    let none: Option<redis::streams::StreamReadReply> = q(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "bob",
            "STREAMS",
            "st:orders",
            ">",
        ],
    )
    .await;
    assert!(none.is_none(), "{none:?}");

    // XREADGROUP ... BLOCK rides a pinned connection; it is woken by an XADD from another client.
    let url = proxy.url();
    let reader = tokio::spawn(async move {
        let mut r = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let started = Instant::now();
        let reply: Option<redis::streams::StreamReadReply> = q(
            &mut r,
            &[
                "XREADGROUP",
                "GROUP",
                "workers",
                "bob",
                "BLOCK",
                "5000",
                "COUNT",
                "1",
                "STREAMS",
                "st:orders",
                ">",
            ],
        )
        .await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late: String = q(&mut c, &["XADD", "st:orders", "*", "n", "late"]).await;
    let (reply, waited) = within("blocked XREADGROUP", reader).await.unwrap();
    let reply = reply.expect("XREADGROUP BLOCK was woken with an entry");
    assert_eq!(reply.keys[0].ids.len(), 1);
    assert_eq!(reply.keys[0].ids[0].id, late);
    assert!(
        waited < Duration::from_secs(4),
        "woken only after {waited:?}"
    );
    let pending: redis::streams::StreamPendingReply =
        q(&mut c, &["XPENDING", "st:orders", "workers"]).await;
    assert_eq!(pending.count(), 2);
}
