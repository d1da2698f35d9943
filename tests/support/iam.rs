//! What the IAM tests share: fixed credentials, a fake upstream that logs every command per
//! connection, a config with `[upstream.iam]`, and readers of that log.

use super::fake::{Answer, FakeUpstream};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use cacheside::config::{Config, IamConfig, Validated};
use cacheside::tier::redis::iam::IamAuth;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const USER: &str = "cacheside-app";
pub const CACHE: &str = "orders-cache";
pub const SECRET: &str = "test-secret-access-key";
pub const SESSION: &str = "test/session+token=";

pub fn credentials() -> Credentials {
    Credentials::new("AKIDTEST", SECRET, Some(SESSION.into()), None, "test")
}

/// Checks one token as ElastiCache would read it: host, action, user, expiry, scope, signature.
pub fn assert_well_formed(token: &str, serverless: bool) {
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
pub type Log = Arc<Mutex<Vec<(usize, Vec<String>)>>>;

/// A fake upstream that answers like Redis would for what these tests send, records every
/// command, and refuses an AUTH when `refuse(connection, nth AUTH on it)` says so.
pub async fn upstream(
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
pub fn iam_config(fake: &FakeUpstream, tweak: impl FnOnce(&mut Config)) -> Config {
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
pub fn with_test_credentials(
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
pub fn by_connection(log: &Log) -> Vec<Vec<Vec<String>>> {
    all_connections(log)
        .into_iter()
        .filter(|c| !is_probe(c))
        .collect()
}

/// The start-up connections that asked `INFO cluster`.
pub fn probes(log: &Log) -> Vec<Vec<Vec<String>>> {
    all_connections(log)
        .into_iter()
        .filter(|c| is_probe(c))
        .collect()
}

pub fn is_probe(c: &[Vec<String>]) -> bool {
    c.iter()
        .any(|a| a.len() == 2 && a[0] == "INFO" && a[1] == "cluster")
}

pub fn all_connections(log: &Log) -> Vec<Vec<Vec<String>>> {
    let log = log.lock().unwrap();
    let n = log.iter().map(|(c, _)| c + 1).max().unwrap_or(0);
    let mut conns = vec![Vec::new(); n];
    for (c, args) in log.iter() {
        conns[*c].push(args.clone());
    }
    conns
}

/// Waits (bounded) until `done` holds for what the upstream has seen.
pub async fn until(log: &Log, what: &str, done: impl Fn(&[Vec<Vec<String>>]) -> bool) {
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

pub fn is_auth(args: &[String]) -> bool {
    args[0] == "AUTH" || (args[0] == "HELLO" && args.get(2).map(String::as_str) == Some("AUTH"))
}

/// The token of an `AUTH user token` or `HELLO 3 AUTH user token`, checking the user.
pub fn token_of(args: &[String]) -> &str {
    let (user, token) = match args[0].as_str() {
        "AUTH" => (&args[1], &args[2]),
        _ => (&args[3], &args[4]),
    };
    assert_eq!(user, USER, "{args:?}");
    token
}
