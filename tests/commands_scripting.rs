//! Scripting through cacheside: EVAL/EVALSHA and Redis 7 functions (FUNCTION LOAD, FCALL).

mod support;

use redis::Value;
use support::commands::{q, start, try_q, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_and_evalsha_run_scripts_with_keys_and_args() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let script = "redis.call('SET', KEYS[1], ARGV[1]); \
                  return {redis.call('INCRBY', KEYS[2], ARGV[2]), redis.call('GET', KEYS[1])}";
    let r: (i64, String) = q(
        &mut c,
        &["EVAL", script, "2", "lua:s", "lua:n", "stored", "5"],
    )
    .await;
    assert_eq!(r, (5, "stored".into()));

    let sha: String = q(&mut c, &["SCRIPT", "LOAD", script]).await;
    assert_eq!(sha.len(), 40);
    // The SHA is redis-server's own: a direct connection sees the script loaded.
    let mut d = redis.direct().await;
    assert_eq!(
        q::<Vec<bool>, _>(&mut d, &["SCRIPT", "EXISTS", &sha]).await,
        [true]
    );
    let r: (i64, String) = q(
        &mut c,
        &["EVALSHA", &sha, "2", "lua:s2", "lua:n", "again", "10"],
    )
    .await;
    assert_eq!(r, (15, "again".into()));

    let err = try_q::<Value, _>(
        &mut c,
        &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("NOSCRIPT"), "{err}");

    // The redis crate's Script: EVALSHA, falling back to SCRIPT LOAD on NOSCRIPT.
    let s = redis::Script::new("return tonumber(ARGV[1]) * 2 + #KEYS");
    let v: i64 = within(
        "Script::invoke",
        s.key("lua:a").key("lua:b").arg(20).invoke_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(v, 42);

    let err = try_q::<Value, _>(&mut c, &["EVAL", "return redis.call('NOPE')", "0"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Unknown Redis command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_load_and_fcall_run_a_redis7_library() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let lib = "#!lua name=cmdlib\n\
               redis.register_function('cmd_incr2', function(keys, args)\n\
                 return redis.call('INCRBY', keys[1], 2)\n\
               end)\n\
               redis.register_function{function_name='cmd_get', callback=function(keys, args)\n\
                 return redis.call('GET', keys[1])\n\
               end, flags={'no-writes'}}\n\
               redis.register_function('cmd_echo', function(keys, args)\n\
                 return args[1] .. ':' .. #keys\n\
               end)\n";
    assert_eq!(
        q::<String, _>(&mut c, &["FUNCTION", "LOAD", lib]).await,
        "cmdlib"
    );
    let err = try_q::<String, _>(&mut c, &["FUNCTION", "LOAD", lib])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        q::<String, _>(&mut c, &["FUNCTION", "LOAD", "REPLACE", lib]).await,
        "cmdlib"
    );

    assert_eq!(
        q::<i64, _>(&mut c, &["FCALL", "cmd_incr2", "1", "fn:ctr"]).await,
        2
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["FCALL", "cmd_incr2", "1", "fn:ctr"]).await,
        4
    );
    assert_eq!(
        q::<String, _>(&mut c, &["FCALL_RO", "cmd_get", "1", "fn:ctr"]).await,
        "4"
    );
    assert_eq!(
        q::<String, _>(&mut c, &["FCALL", "cmd_echo", "2", "fn:a", "fn:b", "hi"]).await,
        "hi:2"
    );
    let err = try_q::<Value, _>(&mut c, &["FCALL_RO", "cmd_incr2", "1", "fn:ctr"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("write flag"), "{err}");

    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "fn:ctr"]).await, "4");
    assert_eq!(
        q::<String, _>(&mut c, &["FUNCTION", "DELETE", "cmdlib"]).await,
        "OK"
    );
    let err = try_q::<Value, _>(&mut c, &["FCALL", "cmd_incr2", "1", "fn:ctr"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Function not found"), "{err}");
}
