//! Unit tests of routing: pinning, pinned state and its release, auth, standalone, no upstream.

use super::*;
use crate::protocol::reply::{Expect, SubKind};

fn route(r: &Router, st: &mut ClientState, args: &[&str], pinned: bool) -> Decision {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(r.route(
        st,
        &Request::from_args(args),
        pinned,
        &mut bytes::BytesMut::new(),
    ))
    .0
}

#[test]
fn stateful_commands_pin_and_plain_ones_share() {
    let r = Router::new(None, true, None);
    let mut st = ClientState::new(1, 0, false);
    assert!(matches!(
        route(&r, &mut st, &["GET", "k"], false),
        Decision::Forward
    ));
    assert!(matches!(
        route(&r, &mut st, &["MULTI"], false),
        Decision::Pinned
    ));
    assert!(matches!(
        route(&r, &mut st, &["BLPOP", "l", "0"], false),
        Decision::Pinned
    ));
    assert!(matches!(
        route(&r, &mut st, &["XREAD", "STREAMS", "s", "0"], false),
        Decision::Forward
    ));
    assert!(matches!(
        route(
            &r,
            &mut st,
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
            false
        ),
        Decision::Pinned
    ));
    assert!(matches!(
        route(&r, &mut st, &["SELECT", "0"], false),
        Decision::Reply(_)
    ));
    assert!(matches!(
        route(&r, &mut st, &["SELECT", "3"], false),
        Decision::Pinned
    ));
    assert!(matches!(
        route(&r, &mut st, &["CLIENT", "TRACKING", "on"], false),
        Decision::Pinned
    ));
    // cacheside is the server its clients see: it lists its own clients.
    assert!(matches!(
        route(&r, &mut st, &["CLIENT", "LIST"], false),
        Decision::Reply(_)
    ));
    assert!(matches!(
        route(&r, &mut st, &["CLIENT", "PAUSE", "10"], false),
        Decision::Forward
    ));
    assert!(matches!(
        route(&r, &mut st, &["GET", "k"], true),
        Decision::Pinned
    ));
}

#[test]
fn pinned_state_is_tracked_until_it_can_be_released() {
    let mut st = ClientState::new(1, 0, false);
    let note = |st: &mut ClientState, args: &[&str]| {
        let req = Request::from_args(args);
        st.note_pinned(command::lookup(req.arg(0)), &req)
    };
    note(&mut st, &["WATCH", "k"]);
    assert!(!st.can_release());
    note(&mut st, &["MULTI"]);
    note(&mut st, &["SET", "k", "v"]);
    note(&mut st, &["EXEC"]);
    assert!(st.can_release());
    note(&mut st, &["SELECT", "2"]);
    assert!(!st.can_release());
    note(&mut st, &["SELECT", "0"]);
    assert!(st.can_release());
    assert_eq!(note(&mut st, &["SUBSCRIBE", "a", "b"]), Expect::Frames(2));
    assert_eq!(
        note(&mut st, &["UNSUBSCRIBE"]),
        Expect::UnsubscribeAll(SubKind::Channel)
    );
    assert_eq!(
        note(&mut st, &["CLIENT", "REPLY", "OFF"]),
        Expect::Frames(0)
    );
    assert_eq!(note(&mut st, &["SET", "a", "b"]), Expect::Frames(0));
    assert_eq!(note(&mut st, &["CLIENT", "REPLY", "ON"]), Expect::Frames(1));
    assert!(!st.can_release());
    let mut st = ClientState::new(1, 0, false);
    note(&mut st, &["MULTI"]);
    note(&mut st, &["SELECT", "1"]);
    note(&mut st, &["EXEC"]);
    assert!(
        !st.can_release(),
        "a SELECT run by EXEC keeps the client pinned"
    );
}

#[test]
fn without_auth_only_auth_hello_and_quit_pass() {
    let r = Router::new(
        Some(ClientAuth {
            username: "default".into(),
            password: "pw".into(),
        }),
        true,
        None,
    );
    let mut st = ClientState::new(1, 0, true);
    assert!(matches!(
        route(&r, &mut st, &["GET", "k"], false),
        Decision::Fail(ProxyError::NoAuth)
    ));
    assert!(matches!(
        route(&r, &mut st, &["AUTH", "bad"], false),
        Decision::Fail(ProxyError::WrongPass)
    ));
    assert!(matches!(
        route(&r, &mut st, &["AUTH", "pw"], false),
        Decision::Reply(_)
    ));
    assert!(matches!(
        route(&r, &mut st, &["GET", "k"], false),
        Decision::Forward
    ));
}

#[test]
fn standalone_mode_sends_string_commands_to_the_store() {
    let store = Arc::new(Store::new(1 << 20, crate::tier::store::Policy::TinyLfu));
    let r = Router::new(None, false, None).with_store(store);
    let mut st = ClientState::new(1, 0, false);
    assert!(matches!(
        route(&r, &mut st, &["set", "k", "v"], false),
        Decision::Store
    ));
    assert!(matches!(
        route(&r, &mut st, &["PING"], false),
        Decision::Reply(_)
    ));
    match route(&r, &mut st, &["HSET", "h", "f", "v"], false) {
        Decision::Fail(e) => assert_eq!(
            e.to_string(),
            "HSET needs an upstream Redis (set upstream.url)"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_an_upstream_forwarded_commands_fail_clearly() {
    let r = Router::new(None, false, None);
    let mut st = ClientState::new(1, 0, false);
    match route(&r, &mut st, &["lpush", "l", "x"], false) {
        Decision::Fail(e) => assert_eq!(
            e.to_string(),
            "LPUSH needs an upstream Redis (set upstream.url)"
        ),
        other => panic!("{other:?}"),
    }
}

fn reply_text(d: Decision) -> String {
    match d {
        Decision::Reply(b) => String::from_utf8_lossy(&b).into_owned(),
        _ => panic!("expected a reply"),
    }
}

#[test]
fn cacheside_commands_need_loopback_or_a_password() {
    let open = Router::new(None, true, None);
    let mut remote = ClientState::new(1, 0, false);
    let refused = reply_text(route(&open, &mut remote, &["CACHESIDE", "STATS"], false));
    assert!(refused.starts_with("-NOPERM "), "{refused}");
    let mut local = ClientState::new(2, 0, false);
    local.loopback = true;
    let stats = reply_text(route(&open, &mut local, &["cacheside", "stats"], false));
    assert!(
        stats.contains("# cacheside\r\n") && stats.contains("hot_state:off"),
        "{stats}"
    );
    // With server.requirepass, an authenticated remote client may; before AUTH, NOAUTH.
    let guarded = Router::new(
        Some(ClientAuth {
            username: "default".into(),
            password: "pw".into(),
        }),
        true,
        None,
    );
    let mut st = ClientState::new(3, 0, true);
    assert!(matches!(
        route(&guarded, &mut st, &["CACHESIDE", "STATS"], false),
        Decision::Fail(ProxyError::NoAuth)
    ));
    let _ = route(&guarded, &mut st, &["AUTH", "pw"], false);
    let stats = reply_text(route(&guarded, &mut st, &["CACHESIDE", "STATS"], false));
    assert!(stats.contains("version:"), "{stats}");
    let unknown = reply_text(route(&guarded, &mut st, &["CACHESIDE", "NOPE"], false));
    assert_eq!(
        unknown,
        "-ERR unknown subcommand 'NOPE'. Try CACHESIDE HELP.\r\n"
    );
    let arity = reply_text(route(&guarded, &mut st, &["CACHESIDE", "EVICT"], false));
    assert!(
        arity.starts_with("-ERR wrong number of arguments for 'cacheside|evict'"),
        "{arity}"
    );
}
