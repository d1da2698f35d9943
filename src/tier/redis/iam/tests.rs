//! Unit tests of IAM tokens: signing against fixtures, credential refresh, the re-AUTH schedule.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::UNIX_EPOCH;

fn settings(serverless: bool) -> IamSettings {
    IamSettings {
        region: "us-east-1".into(),
        cache_name: "my-cache".into(),
        user_id: "app-user".into(),
        serverless,
    }
}

fn creds(key: &str, expiry: Option<SystemTime>) -> Credentials {
    Credentials::new(key, "secret", Some("session".into()), expiry, "test")
}

#[test]
fn token_is_the_presigned_url_without_scheme() {
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let t = presign(&settings(true), &creds("AKID", None), at).unwrap();
    let s = t.secret();
    assert!(
        s.starts_with("my-cache/?Action=connect&User=app-user&ResourceType=ServerlessCache&"),
        "{s}"
    );
    assert!(s.contains("&X-Amz-Expires=900&"), "{s}");
    assert!(s.contains("&X-Amz-SignedHeaders=host&"), "{s}");
    assert!(
        s.contains("&X-Amz-Credential=AKID%2F20231114%2Fus-east-1%2Felasticache%2Faws4_request&"),
        "{s}"
    );
    assert!(s.contains("&X-Amz-Security-Token=session&X-Amz-Signature="));
    assert!(!s.contains("secret"));
    assert_eq!(format!("{t:?}"), "Token(app-user, ********)");
}

#[test]
fn user_ids_are_percent_encoded() {
    assert_eq!(uri_encode("a b/c+d=é~_.-"), "a%20b%2Fc%2Bd%3D%C3%A9~_.-");
}

/// A provider that counts its calls and hands out credentials `AKID<n>` expiring `ttl`
/// after the test clock's now.
#[derive(Debug, Clone)]
struct Counting {
    calls: Arc<AtomicUsize>,
    now: Arc<std::sync::Mutex<SystemTime>>,
    ttl: Option<Duration>,
}

impl ProvideCredentials for Counting {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = *self.now.lock().unwrap();
        aws_credential_types::provider::future::ProvideCredentials::ready(Ok(creds(
            &format!("AKID{n}"),
            self.ttl.map(|t| now + t),
        )))
    }
}

fn counting(ttl: Option<Duration>) -> (IamAuth, Counting) {
    let p = Counting {
        calls: Arc::new(AtomicUsize::new(0)),
        now: Arc::new(std::sync::Mutex::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )),
        ttl,
    };
    let now = p.now.clone();
    let auth =
        IamAuth::with_provider(settings(false), p.clone()).with_clock(move || *now.lock().unwrap());
    (auth, p)
}

fn advance(p: &Counting, d: Duration) {
    *p.now.lock().unwrap() += d;
}

fn key_of(t: &Token) -> String {
    let s = t.secret();
    let from = s.find("X-Amz-Credential=").unwrap() + "X-Amz-Credential=".len();
    s[from..].split("%2F").next().unwrap().to_string()
}

#[tokio::test]
async fn credentials_are_reused_until_close_to_expiry_then_refreshed() {
    let (auth, p) = counting(Some(Duration::from_secs(3600)));
    assert_eq!(key_of(&auth.token().await.unwrap()), "AKID1");
    advance(&p, Duration::from_secs(50 * 60));
    assert_eq!(key_of(&auth.token().await.unwrap()), "AKID1");
    // 6 minutes left: still reused; 4 minutes left: refreshed before signing.
    advance(&p, Duration::from_secs(4 * 60));
    assert_eq!(key_of(&auth.token().await.unwrap()), "AKID1");
    advance(&p, Duration::from_secs(2 * 60));
    assert_eq!(key_of(&auth.token().await.unwrap()), "AKID2");
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_refresh_signs_with_the_old_credentials_until_they_expire() {
    #[derive(Debug)]
    struct OnceOnly(Arc<AtomicUsize>, SystemTime);
    impl ProvideCredentials for OnceOnly {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
            aws_credential_types::provider::future::ProvideCredentials::ready(if first {
                Ok(creds("AKID1", Some(self.1)))
            } else {
                Err(
                    aws_credential_types::provider::error::CredentialsError::provider_timed_out(
                        Duration::from_secs(5),
                    ),
                )
            })
        }
    }
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let now = Arc::new(std::sync::Mutex::new(start));
    let clock = now.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let auth = IamAuth::with_provider(
        settings(false),
        OnceOnly(calls.clone(), start + Duration::from_secs(3600)),
    )
    .with_clock(move || *clock.lock().unwrap());
    auth.token().await.unwrap();
    // 3 minutes left: a refresh is due and fails; the current credentials still sign.
    *now.lock().unwrap() = start + Duration::from_secs(57 * 60);
    assert_eq!(key_of(&auth.token().await.unwrap()), "AKID1");
    // 30 seconds left: too close to expiry to sign with.
    *now.lock().unwrap() = start + Duration::from_secs(3570);
    let err = auth.token().await.unwrap_err().to_string();
    assert!(err.starts_with("no AWS credentials"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn credentials_without_expiry_are_read_again_after_a_while() {
    let (auth, p) = counting(None);
    auth.token().await.unwrap();
    advance(&p, Duration::from_secs(14 * 60));
    auth.token().await.unwrap();
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    advance(&p, Duration::from_secs(2 * 60));
    assert_eq!(key_of(&auth.token().await.unwrap()), "AKID2");
}

#[tokio::test]
async fn concurrent_connections_share_one_fetch() {
    let (auth, p) = counting(Some(Duration::from_secs(3600)));
    let all = (0..8).map(|_| {
        let a = auth.clone();
        tokio::spawn(async move { a.token().await.unwrap() })
    });
    for t in all {
        t.await.unwrap();
    }
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn reauth_delay_is_between_ten_and_eleven_hours() {
    let auth = IamAuth::new(settings(false));
    for _ in 0..100 {
        let d = auth.reauth_delay();
        assert!(
            d >= Duration::from_secs(10 * 3600) && d <= REAUTH_EVERY,
            "{d:?}"
        );
    }
    assert!(REAUTH_EVERY < CONNECTION_LIMIT);
}

#[tokio::test(start_paused = true)]
async fn live_connections_reauthenticate_with_fresh_tokens_before_twelve_hours() {
    let start = tokio::time::Instant::now();
    let base = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // Signing time follows tokio's paused clock, so each token shows when it was made.
    let auth = IamAuth::with_provider(settings(false), creds("AKID", None))
        .with_clock(move || base + start.elapsed());
    let addr: Arc<str> = "cache:6379".into();
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = sent.clone();
    let task = tokio::spawn({
        let auth = auth.clone();
        async move {
            reauthenticate(&auth, &addr, |token| {
                log.lock().unwrap().push((start.elapsed(), token));
                async { Ok(()) }
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(36 * 3600)).await;
    task.abort();
    let sent = sent.lock().unwrap();
    assert!(sent.len() >= 3, "{} re-auths in 36 h", sent.len());
    let mut last = (Duration::ZERO, String::new());
    for (at, token) in sent.iter() {
        let gap = *at - last.0;
        assert!(
            gap >= Duration::from_secs(10 * 3600) && gap < CONNECTION_LIMIT,
            "re-auth {gap:?} after the previous one"
        );
        // X-Amz-Date (YYYYMMDDTHHMMSSZ) sorts as time does: each token was signed later.
        let date = date_of(token);
        assert!(date > last.1, "{date} after {}", last.1);
        last = (*at, date);
    }
}

fn date_of(t: &Token) -> String {
    let s = t.secret();
    let from = s.find("X-Amz-Date=").unwrap() + "X-Amz-Date=".len();
    s[from..from + 16].to_string()
}

#[tokio::test(start_paused = true)]
async fn a_refused_reauth_ends_the_connection_and_a_missing_token_is_retried() {
    // No credentials at first: the connection is kept and the re-auth retried a minute later.
    let calls = Arc::new(AtomicUsize::new(0));
    #[derive(Debug)]
    struct Flaky(Arc<AtomicUsize>);
    impl ProvideCredentials for Flaky {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            aws_credential_types::provider::future::ProvideCredentials::ready(if n == 0 {
                Err(
                    aws_credential_types::provider::error::CredentialsError::not_loaded(
                        "nothing yet",
                    ),
                )
            } else {
                Ok(creds("AKID", None))
            })
        }
    }
    let auth = IamAuth::with_provider(settings(false), Flaky(calls.clone()));
    let addr: Arc<str> = "cache:6379".into();
    let start = tokio::time::Instant::now();
    let err = reauthenticate(&auth, &addr, |_| async {
        Err(crate::error::UpstreamError::Auth {
            addr: "cache:6379".into(),
            detail: "WRONGPASS".into(),
        })
    })
    .await;
    assert!(err.to_string().contains("WRONGPASS"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(10 * 3600) + REAUTH_RETRY,
        "{took:?}"
    );
    assert!(took <= REAUTH_EVERY + REAUTH_RETRY, "{took:?}");
}
