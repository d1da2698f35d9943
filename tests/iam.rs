//! ElastiCache IAM authentication. No AWS is reachable here, so: tokens are compared with ones
//! botocore's request signer made for a fixed clock and fixed credentials
//! (scripts/elasticache-iam-fixture.py); the handshake, the in-band re-authentication and the
//! reconnects are checked against a fake upstream that records what each connection was sent
//! (a real Redis cannot be given a password equal to a token it has not seen yet).

mod support;

use aws_credential_types::provider::{error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;
use cacheside::config::units::{Human, Size};
use cacheside::config::{Config, IamConfig, Validated};
use cacheside::tier::redis::iam::{presign, IamAuth, IamSettings};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use support::fake::{Answer, FakeUpstream};
use support::Proxy;

#[test]
fn tokens_match_botocores_for_a_fixed_clock_and_credentials() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/elasticache_iam_tokens.json"))
            .expect("fixture is JSON");
    let cases = fixture["cases"].as_array().expect("cases");
    let mut kinds = Vec::new();
    for c in cases {
        let s = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("{k}")).to_string();
        let settings = IamSettings {
            region: s("region"),
            cache_name: s("cache_name"),
            user_id: s("user_id"),
            serverless: c["serverless"].as_bool().expect("serverless"),
        };
        let session = c["session_token"].as_str().map(String::from);
        kinds.push((settings.serverless, session.is_some()));
        let creds = Credentials::new(
            s("access_key_id"),
            s("secret_access_key"),
            session,
            None,
            "fixture",
        );
        let at = UNIX_EPOCH + Duration::from_secs(c["unix_time"].as_u64().expect("unix_time"));
        let token = presign(&settings, &creds, at).expect("signs");
        assert_eq!(token.secret(), s("token"), "case {}", s("name"));
        assert_eq!(token.user(), settings.user_id);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [(false, false), (false, true), (true, false), (true, true)],
        "a replication group and a serverless cache, each with and without a session token"
    );
}

const USER: &str = "cacheside-app";
const CACHE: &str = "orders-cache";
const SECRET: &str = "test-secret-access-key";
const SESSION: &str = "test/session+token=";

fn credentials() -> Credentials {
    Credentials::new("AKIDTEST", SECRET, Some(SESSION.into()), None, "test")
}

/// Checks one token as ElastiCache would read it: host, action, user, expiry, scope, signature.
fn assert_well_formed(token: &str, serverless: bool) {
    let (host, query) = token.split_once("/?").expect("host/?query");
    assert_eq!(host, CACHE);
    let params: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').expect("name=value"))
        .collect();
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{k} missing from {token}"))
    };
    assert_eq!(params[0], ("Action", "connect"));
    assert_eq!(params[1], ("User", USER));
    assert_eq!(
        params.contains(&("ResourceType", "ServerlessCache")),
        serverless
    );
    assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert_eq!(get("X-Amz-Expires"), "900");
    assert_eq!(get("X-Amz-SignedHeaders"), "host");
    let credential: Vec<&str> = get("X-Amz-Credential").split("%2F").collect();
    assert_eq!(credential.len(), 5, "{token}");
    assert_eq!(credential[0], "AKIDTEST");
    assert!(credential[1].len() == 8 && credential[1].bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        &credential[2..],
        ["eu-west-1", "elasticache", "aws4_request"]
    );
    let date = get("X-Amz-Date");
    assert!(date.len() == 16 && date.starts_with(credential[1]) && date.ends_with('Z'));
    assert_eq!(get("X-Amz-Security-Token"), "test%2Fsession%2Btoken%3D");
    let (last, signature) = params.last().expect("params");
    assert_eq!(*last, "X-Amz-Signature");
    assert!(signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!token.contains(SECRET));
}

/// What the fake upstream was sent: (connection number, arguments), in arrival order.
type Log = Arc<Mutex<Vec<(usize, Vec<String>)>>>;

/// A fake upstream that answers like Redis would for what these tests send, records every
/// command, and refuses an AUTH when `refuse(connection, nth AUTH on it)` says so.
async fn upstream(
    refuse: impl Fn(usize, usize) -> bool + Send + Sync + 'static,
) -> (FakeUpstream, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let fake = FakeUpstream::start_per_connection(move |conn, _, args| {
        let args: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let mut seen = seen.lock().unwrap();
        seen.push((conn, args.clone()));
        let auths = seen
            .iter()
            .filter(|(c, a)| *c == conn && (a[0] == "AUTH" || a[0] == "HELLO"))
            .count();
        let reply = match args[0].to_ascii_uppercase().as_str() {
            "AUTH" | "HELLO" if refuse(conn, auths) => {
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_string()
            }
            "GET" => format!("${}\r\n{}\r\n", args[1].len(), args[1]),
            "CLIENT" if args[1].eq_ignore_ascii_case("ID") => format!(":{}\r\n", 100 + conn),
            "SUBSCRIBE" => format!(
                "*3\r\n$9\r\nsubscribe\r\n${}\r\n{}\r\n:1\r\n",
                args[1].len(),
                args[1]
            ),
            "EXEC" => "*0\r\n".to_string(),
            _ => "+OK\r\n".to_string(),
        };
        Answer::Bytes(reply.into_bytes())
    })
    .await;
    (fake, log)
}

/// Config for cacheside in front of `fake` with `[upstream.iam]` set.
fn iam_config(fake: &FakeUpstream, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.upstream.url = Some(fake.url());
    c.upstream.connections = 1;
    c.upstream.iam = Some(IamConfig {
        region: "eu-west-1".into(),
        cache_name: CACHE.into(),
        user_id: USER.into(),
        serverless: false,
    });
    tweak(&mut c);
    c
}

/// Validates `config` and gives its IAM auth the test's credentials (injected, not from the
/// process environment) and re-auth period.
fn with_test_credentials(
    config: Config,
    creds: impl ProvideCredentials + 'static,
    reauth_every: Option<Duration>,
) -> Validated {
    let mut v = config.validate().expect("test config is valid");
    let upstream = v.upstream.as_mut().expect("upstream configured");
    let settings = upstream
        .iam
        .as_ref()
        .expect("iam configured")
        .settings()
        .clone();
    let mut auth = IamAuth::with_provider(settings, creds);
    if let Some(every) = reauth_every {
        auth = auth.with_reauth_every(every);
    }
    upstream.iam = Some(auth);
    v
}

/// The commands each connection received, by connection number, without the one that asks
/// the upstream whether it is a cluster at start (`upstream.mode = "auto"`; see `probes`).
fn by_connection(log: &Log) -> Vec<Vec<Vec<String>>> {
    all_connections(log)
        .into_iter()
        .filter(|c| !is_probe(c))
        .collect()
}

/// The start-up connections that asked `INFO cluster`.
fn probes(log: &Log) -> Vec<Vec<Vec<String>>> {
    all_connections(log)
        .into_iter()
        .filter(|c| is_probe(c))
        .collect()
}

fn is_probe(c: &[Vec<String>]) -> bool {
    c.iter()
        .any(|a| a.len() == 2 && a[0] == "INFO" && a[1] == "cluster")
}

fn all_connections(log: &Log) -> Vec<Vec<Vec<String>>> {
    let log = log.lock().unwrap();
    let n = log.iter().map(|(c, _)| c + 1).max().unwrap_or(0);
    let mut conns = vec![Vec::new(); n];
    for (c, args) in log.iter() {
        conns[*c].push(args.clone());
    }
    conns
}

/// Waits (bounded) until `done` holds for what the upstream has seen.
async fn until(log: &Log, what: &str, done: impl Fn(&[Vec<Vec<String>>]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&by_connection(log)) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            by_connection(log)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_auth(args: &[String]) -> bool {
    args[0] == "AUTH" || (args[0] == "HELLO" && args.get(2).map(String::as_str) == Some("AUTH"))
}

/// The token of an `AUTH user token` or `HELLO 3 AUTH user token`, checking the user.
fn token_of(args: &[String]) -> &str {
    let (user, token) = match args[0].as_str() {
        "AUTH" => (&args[1], &args[2]),
        _ => (&args[3], &args[4]),
    };
    assert_eq!(user, USER, "{args:?}");
    token
}

#[tokio::test]
async fn every_connection_kind_authenticates_with_the_iam_user_and_a_fresh_token() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |c| {
        c.hot.coherence = "broadcast".into();
        c.cache = vec![cacheside::config::CacheRule {
            keys: "product:*".into(),
            ttl: Human::secs(30),
            max_value_size: Size::mib(1),
            enabled: true,
        }];
    });
    let proxy = Proxy::start_validated(with_test_credentials(config, credentials(), None)).await;

    // Shared connection (RESP2), then RESP3's shared connection, then a pinned one.
    let mut client = proxy.client().await;
    let v: String = redis::cmd("GET")
        .arg("a")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(v, "a");
    let mut resp3 = proxy.client_resp3().await;
    let v: String = redis::cmd("GET")
        .arg("b")
        .query_async(&mut resp3)
        .await
        .unwrap();
    assert_eq!(v, "b");
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"EXEC\r\n").await;
    raw.expect(b"*0\r\n").await;

    until(&log, "the invalidation connection", |conns| {
        conns.iter().any(|c| c.iter().any(|a| a[0] == "SUBSCRIBE"))
    })
    .await;
    let conns = by_connection(&log);
    let kind = |c: &[Vec<String>]| {
        if c.iter().any(|a| a[0] == "SUBSCRIBE") {
            "coherence"
        } else if c.iter().any(|a| a[0] == "MULTI") {
            "pinned"
        } else if c[0][0] == "HELLO" {
            "shared resp3"
        } else {
            "shared resp2"
        }
    };
    let mut kinds: Vec<&str> = conns.iter().map(|c| kind(c)).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["coherence", "pinned", "shared resp2", "shared resp3"],
        "{conns:?}"
    );
    // The start-up question "is this a cluster?" authenticates like every other connection.
    let probes = probes(&log);
    assert_eq!(probes.len(), 1, "{probes:?}");
    assert!(is_auth(&probes[0][0]), "{probes:?}");
    for c in &conns {
        assert!(
            is_auth(&c[0]),
            "{} connection began with {:?}",
            kind(c),
            c[0]
        );
        assert_well_formed(token_of(&c[0]), false);
        assert_eq!(c.iter().filter(|a| is_auth(a)).count(), 1);
    }
    let resp3 = conns.iter().find(|c| kind(c) == "shared resp3").unwrap();
    assert_eq!(resp3[0][..3], ["HELLO", "3", "AUTH"]);
    drop(client);
    proxy.shutdown().await;
}

#[tokio::test]
async fn serverless_tokens_sign_the_resource_type() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |c| {
        if let Some(iam) = &mut c.upstream.iam {
            iam.serverless = true;
        }
    });
    let proxy = Proxy::start_validated(with_test_credentials(config, credentials(), None)).await;
    let mut client = proxy.client().await;
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(v, "k");
    let conns = by_connection(&log);
    assert_well_formed(token_of(&conns[0][0]), true);
}

#[tokio::test]
async fn shared_connections_reauthenticate_in_band_and_clients_never_see_the_reply() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |_| {});
    let every = Duration::from_millis(300);
    let proxy =
        Proxy::start_validated(with_test_credentials(config, credentials(), Some(every))).await;
    let mut client = proxy.client().await;
    // Requests keep flowing while the connection re-authenticates; each gets its own reply.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1100) {
        let key = format!("key{i}");
        let v: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut client)
            .await
            .unwrap();
        assert_eq!(v, key);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conns = by_connection(&log);
    assert_eq!(
        conns.len(),
        1,
        "one shared connection, never reopened: {conns:?}"
    );
    let auths: Vec<&Vec<String>> = conns[0].iter().filter(|a| is_auth(a)).collect();
    assert!(
        auths.len() >= 3,
        "{} AUTHs in 1.1 s with a 300 ms period",
        auths.len()
    );
    assert!(
        auths.len() <= 5,
        "{} AUTHs in 1.1 s with a 300 ms period",
        auths.len()
    );
    for a in &auths {
        assert_eq!(a.len(), 3, "AUTH user token: {a:?}");
        assert_well_formed(token_of(a), false);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_reauthentication_closes_the_connection_and_it_reconnects() {
    // The second AUTH on the first connection is refused (the IAM policy was revoked, say).
    let (fake, log) = upstream(|conn, nth| conn == 0 && nth == 2).await;
    // Standalone: no start-up probe, so connection 0 is the shared one.
    let config = iam_config(&fake, |c| c.upstream.mode = "standalone".into());
    let proxy = Proxy::start_validated(with_test_credentials(
        config,
        credentials(),
        Some(Duration::from_millis(200)),
    ))
    .await;
    let mut client = proxy.client().await;
    let v: String = redis::cmd("GET")
        .arg("a")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(v, "a");
    until(&log, "a second connection", |conns| conns.len() >= 2).await;
    let conns = by_connection(&log);
    assert!(is_auth(&conns[1][0]), "{conns:?}");
    assert_well_formed(token_of(&conns[1][0]), false);
    // The new connection serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r: redis::RedisResult<String> =
            redis::cmd("GET").arg("b").query_async(&mut client).await;
        match r {
            Ok(v) => {
                assert_eq!(v, "b");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_kept_pinned_connection_is_replaced_once_reauthentication_is_due() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |_| {});
    let every = Duration::from_secs(1);
    let proxy =
        Proxy::start_validated(with_test_credentials(config, credentials(), Some(every))).await;
    let mut raw = proxy.raw().await;
    let pinned = |log: &Log| {
        by_connection(log)
            .iter()
            .filter(|c| c.iter().any(|a| a[0] == "MULTI"))
            .count()
    };
    transaction(&mut raw).await;
    transaction(&mut raw).await;
    assert_eq!(pinned(&log), 1, "kept between pinned phases");
    tokio::time::sleep(every + Duration::from_millis(100)).await;
    transaction(&mut raw).await;
    assert_eq!(pinned(&log), 2, "replaced after its re-auth time");
    for c in by_connection(&log) {
        assert!(is_auth(&c[0]));
        assert_well_formed(token_of(&c[0]), false);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_invalidation_connection_is_replaced_before_the_limit() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |c| {
        c.hot.coherence = "broadcast".into();
        c.cache = vec![cacheside::config::CacheRule {
            keys: "product:*".into(),
            ttl: Human::secs(30),
            max_value_size: Size::mib(1),
            enabled: true,
        }];
    });
    let proxy = Proxy::start_validated(with_test_credentials(
        config,
        credentials(),
        Some(Duration::from_millis(200)),
    ))
    .await;
    let subscribers = |conns: &[Vec<Vec<String>>]| {
        conns
            .iter()
            .filter(|c| c.iter().any(|a| a[0] == "SUBSCRIBE"))
            .count()
    };
    until(&log, "three invalidation connections", |c| {
        subscribers(c) >= 3
    })
    .await;
    for c in by_connection(&log) {
        assert!(is_auth(&c[0]));
        assert_well_formed(token_of(&c[0]), false);
    }
    proxy.shutdown().await;
}

/// MULTI then EXEC: enters the pinned phase and leaves it.
async fn transaction(raw: &mut support::Raw) {
    raw.send(b"MULTI\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"EXEC\r\n").await;
    raw.expect(b"*0\r\n").await;
}

/// A credential chain that finds nothing.
#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
            "no providers in chain provided credentials",
        )))
    }
}

#[tokio::test]
async fn without_credentials_clients_get_an_error_naming_the_cause() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |_| {});
    let proxy = Proxy::start_validated(with_test_credentials(config, NoCredentials, None)).await;
    let mut client = proxy.client().await;
    let err = redis::cmd("GET")
        .arg("a")
        .query_async::<String>(&mut client)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ElastiCache IAM token: no AWS credentials"),
        "{err}"
    );
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing was sent without a token"
    );
    proxy.shutdown().await;
}

/// Credentials shared by the test and the provider, so the test can rotate them.
#[derive(Debug, Clone)]
struct Rotating(Arc<Mutex<Credentials>>);

impl ProvideCredentials for Rotating {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Ok(self.0.lock().unwrap().clone()))
    }
}

#[tokio::test]
async fn expiring_credentials_are_refreshed_before_a_token_is_signed() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |_| {});
    // Credentials that expire within the refresh margin are replaced at every use.
    let soon = std::time::SystemTime::now() + Duration::from_secs(60);
    let current = Arc::new(Mutex::new(Credentials::new(
        "AKIDTEST",
        SECRET,
        Some(SESSION.into()),
        Some(soon),
        "test",
    )));
    let proxy = Proxy::start_validated(with_test_credentials(
        config,
        Rotating(current.clone()),
        Some(Duration::from_millis(200)),
    ))
    .await;
    let mut client = proxy.client().await;
    let _: String = redis::cmd("GET")
        .arg("a")
        .query_async(&mut client)
        .await
        .unwrap();
    *current.lock().unwrap() = Credentials::new(
        "AKIDTEST",
        SECRET,
        Some("rotated".into()),
        Some(std::time::SystemTime::now() + Duration::from_secs(3600)),
        "test",
    );
    until(
        &log,
        "an AUTH signed with the rotated credentials",
        |conns| {
            conns[0]
                .iter()
                .any(|a| is_auth(a) && token_of(a).contains("X-Amz-Security-Token=rotated"))
        },
    )
    .await;
    proxy.shutdown().await;
}
