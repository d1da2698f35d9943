//! The AWS credential chain as the cacheside binary runs it, with the environment that EKS
//! injects for Pod Identity and for IRSA, pointed at stand-ins on loopback: a container
//! credentials endpoint, and an STS endpoint (`AWS_ENDPOINT_URL_STS`) that answers
//! AssumeRoleWithWebIdentity. The environment goes to the child process only; the upstream is
//! the fake, which records the token each connection authenticates with.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake::{Answer, FakeUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What an HTTP stand-in received: each request's head and body.
type Requests = Arc<Mutex<Vec<(String, String)>>>;

/// A loopback HTTP/1.1 server that answers every request with `body`.
async fn http_stand_in(content_type: &'static str, body: String) -> (SocketAddr, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests: Requests = Arc::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen, body) = (seen.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req_body = String::from_utf8_lossy(&buf[head_end..head_end + length]);
                seen.lock().unwrap().push((head, req_body.into_owned()));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, requests)
}

/// A fake upstream that accepts any AUTH and records the tokens.
async fn upstream() -> (FakeUpstream, Arc<Mutex<Vec<String>>>) {
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = tokens.clone();
    let fake = FakeUpstream::start(move |_, args| {
        let args: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        match args[0].as_str() {
            "AUTH" => {
                assert_eq!(args[1], "cacheside", "{args:?}");
                seen.lock().unwrap().push(args[2].clone());
                Answer::Bytes(b"+OK\r\n".to_vec())
            }
            "GET" => Answer::Bytes(format!("${}\r\n{}\r\n", args[1].len(), args[1]).into_bytes()),
            _ => Answer::Bytes(b"+OK\r\n".to_vec()),
        }
    })
    .await;
    (fake, tokens)
}

/// The cacheside binary in front of `fake`, with `[upstream.iam]` and the AWS environment
/// `aws_env` only (no ambient credentials, profiles or instance metadata).
fn cacheside(
    fake: &FakeUpstream,
    home: &std::path::Path,
    aws_env: &[(&str, String)],
) -> (Child, u16) {
    let (child, [port]) = support::process::spawn_listening(Duration::from_secs(20), |[port]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacheside"));
        cmd.env_clear()
            .current_dir(home)
            .env("HOME", home)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", home.join("no-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
            .env("CACHESIDE_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("CACHESIDE_ADMIN_LISTEN", "")
            .env("CACHESIDE_UPSTREAM_URL", fake.url())
            .env("CACHESIDE_UPSTREAM_CONNECTIONS", "1")
            .env("CACHESIDE_UPSTREAM_CONNECT_TIMEOUT", "5s")
            .env("CACHESIDE_UPSTREAM_IAM_REGION", "eu-central-1")
            .env("CACHESIDE_UPSTREAM_IAM_CACHE_NAME", "orders-cache")
            .env("CACHESIDE_UPSTREAM_IAM_USER_ID", "cacheside")
            .env("CACHESIDE_LOG_LEVEL", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in aws_env {
            cmd.env(k, v);
        }
        cmd
    });
    (child, port)
}

/// A GET through cacheside, retried until the upstream connection is up (bounded).
async fn get_through(port: u16) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match redis::cmd("GET")
            .arg("k")
            .query_async::<String>(&mut con)
            .await
        {
            Ok(v) => {
                assert_eq!(v, "k");
                return;
            }
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the child and returns what it logged.
fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn query_param<'a>(token: &'a str, name: &str) -> &'a str {
    token
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} missing from {token}"))
}

#[tokio::test]
async fn eks_pod_identity_credentials_sign_the_token() {
    let (fake, tokens) = upstream().await;
    let (agent, requests) = http_stand_in(
        "application/json",
        r#"{"AccessKeyId":"ASIAPODIDENTITY","SecretAccessKey":"pod-identity-secret","Token":"pod-identity-session","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, "service-account-jwt").unwrap();
    let (child, port) = cacheside(
        &fake,
        home.path(),
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{agent}/v1/credentials"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.display().to_string(),
            ),
        ],
    );
    get_through(port).await;
    let log = stop(child);

    let requests = requests.lock().unwrap();
    assert_eq!(
        requests.len(),
        1,
        "one fetch for the connection: {requests:?}"
    );
    let head = requests[0].0.to_ascii_lowercase();
    assert!(head.starts_with("get /v1/credentials "), "{head}");
    assert!(
        head.contains("authorization: service-account-jwt"),
        "{head}"
    );
    let tokens = tokens.lock().unwrap();
    let token = tokens.first().expect("an AUTH reached the upstream");
    assert!(
        token.starts_with("orders-cache/?Action=connect&User=cacheside&"),
        "{token}"
    );
    assert!(query_param(token, "X-Amz-Credential").starts_with("ASIAPODIDENTITY%2F"));
    assert!(query_param(token, "X-Amz-Credential")
        .ends_with("%2Feu-central-1%2Felasticache%2Faws4_request"));
    assert_eq!(
        query_param(token, "X-Amz-Security-Token"),
        "pod-identity-session"
    );
    for secret in [
        "pod-identity-secret",
        "pod-identity-session",
        "service-account-jwt",
        "X-Amz-Signature",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[tokio::test]
async fn irsa_web_identity_is_exchanged_at_sts_for_the_signing_credentials() {
    let (fake, tokens) = upstream().await;
    let sts_reply = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:shop:orders</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/orders-cache/cacheside</Arn>
      <AssumedRoleId>AROAEXAMPLE:cacheside</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIRSAEXAMPLE</AccessKeyId>
      <SecretAccessKey>irsa-secret</SecretAccessKey>
      <SessionToken>irsa-session</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;
    let (sts, requests) = http_stand_in("text/xml", sts_reply.into()).await;
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("eks-token");
    std::fs::write(&token_file, "projected-service-account-jwt").unwrap();
    let (child, port) = cacheside(
        &fake,
        home.path(),
        &[
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/orders-cache".into(),
            ),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AWS_ENDPOINT_URL_STS", format!("http://{sts}")),
        ],
    );
    get_through(port).await;
    let log = stop(child);

    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 1, "one STS call: {requests:?}");
    let (head, body) = &requests[0];
    assert!(head.starts_with("POST / "), "{head}");
    assert!(body.contains("Action=AssumeRoleWithWebIdentity"), "{body}");
    assert!(
        body.contains("WebIdentityToken=projected-service-account-jwt"),
        "{body}"
    );
    assert!(
        body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Forders-cache"),
        "{body}"
    );
    let tokens = tokens.lock().unwrap();
    let token = tokens.first().expect("an AUTH reached the upstream");
    assert!(query_param(token, "X-Amz-Credential").starts_with("ASIAIRSAEXAMPLE%2F"));
    assert_eq!(query_param(token, "X-Amz-Security-Token"), "irsa-session");
    for secret in [
        "irsa-secret",
        "irsa-session",
        "projected-service-account-jwt",
        "X-Amz-Signature",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
