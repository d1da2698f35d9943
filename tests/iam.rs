//! ElastiCache IAM authentication. No AWS is reachable here, so: tokens are compared with ones
//! botocore's request signer made for a fixed clock and fixed credentials
//! (scripts/elasticache-iam-fixture.py); the handshake, the in-band re-authentication and the
//! reconnects are checked against a fake upstream that records what each connection was sent
//! (a real Redis cannot be given a password equal to a token it has not seen yet).

mod support;

use aws_credential_types::provider::{error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;
use cacheside::tier::redis::iam::{presign, IamSettings};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use support::iam::*;
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

#[tokio::test]
async fn every_connection_kind_authenticates_with_the_iam_user_and_a_fresh_token() {
    let (fake, log) = upstream(|_, _| false).await;
    let config = iam_config(&fake, |c| {
        c.hot.coherence = "broadcast".into();
        c.cache = vec![support::cache_rule("product:*", 30)];
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
