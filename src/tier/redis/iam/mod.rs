//! ElastiCache IAM authentication: a SigV4-presigned token, minted for each connection from the
//! standard AWS credential chain, is the AUTH password; and the schedule on which live
//! connections authenticate again before ElastiCache's 12-hour limit.
//!
//! The token is the presigned URL of `GET http://<cache name>/?Action=connect&User=<user id>`
//! (plus `&ResourceType=ServerlessCache` for a serverless cache), service `elasticache`, expiry
//! 900 s, signed header `host`, with the scheme cut off. Signing is aws-sigv4's; credentials come
//! from aws-config's default chain (environment variables, profile files, the web identity token
//! file of IRSA, the container endpoint of EKS Pod Identity or ECS, then EC2 instance metadata).
//! A token is checked by ElastiCache only when a connection authenticates, so each one is minted
//! right before it is sent and never reused.

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use rand::Rng;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Mutex, OnceCell};

/// How long a token is accepted after it is signed (`X-Amz-Expires`).
pub const TOKEN_EXPIRY: Duration = Duration::from_secs(900);
/// ElastiCache closes an IAM-authenticated connection this long after its last AUTH.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(12 * 3600);
/// Default for how long after its last AUTH a connection authenticates again; the actual delay
/// is drawn between 10/11 of it and all of it (10 to 11 hours), so that connections opened
/// together do not all authenticate again in the same second.
pub const REAUTH_EVERY: Duration = Duration::from_secs(11 * 3600);
/// After a failed re-authentication (no credentials, upstream busy), the next try comes this
/// much later; the connection has at least an hour left before the limit.
pub const REAUTH_RETRY: Duration = Duration::from_secs(60);
/// Credentials with less than this left are replaced before signing.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Credentials that carry no expiry (static keys in the environment) are read again after this.
const CREDENTIALS_TTL: Duration = Duration::from_secs(15 * 60);
/// When a refresh fails, credentials are still used until this long before they expire.
const LAST_USE: Duration = Duration::from_secs(60);
/// Bound on one fetch of credentials (the chain's own HTTP timeouts are shorter).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(20);

/// Checked `upstream.iam` settings (built by `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamSettings {
    /// AWS region of the cache, e.g. `us-east-1`.
    pub region: String,
    /// Replication group id or serverless cache name, lowercase.
    pub cache_name: String,
    /// The ElastiCache user id (for IAM users it equals the user name).
    pub user_id: String,
    /// A serverless cache (`ResourceType=ServerlessCache` is signed into the token).
    pub serverless: bool,
}

/// Why no token could be minted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IamError {
    #[error("no AWS credentials: {0}")]
    Credentials(String),
    #[error("fetching AWS credentials took longer than {0:?}")]
    Timeout(Duration),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// A user and the token that authenticates it. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    user: String,
    token: String,
}

impl Token {
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The token itself: for the AUTH command only, never for a log line.
    pub fn secret(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, ********)", self.user)
    }
}

/// Signs the token for `settings` with `creds` at `at`. Pure: the same inputs give the same token.
pub fn presign(
    settings: &IamSettings,
    creds: &Credentials,
    at: SystemTime,
) -> Result<Token, IamError> {
    let sign_err = |e: &dyn fmt::Display| IamError::Sign(e.to_string());
    let mut url = format!(
        "http://{}/?Action=connect&User={}",
        settings.cache_name,
        uri_encode(&settings.user_id)
    );
    if settings.serverless {
        url.push_str("&ResourceType=ServerlessCache");
    }
    let identity: Identity = creds.clone().into();
    let mut signing = SigningSettings::default();
    signing.signature_location = SignatureLocation::QueryParams;
    signing.expires_in = Some(TOKEN_EXPIRY);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&settings.region)
        .name("elasticache")
        .time(at)
        .settings(signing)
        .build()
        .map_err(|e| sign_err(&e))?
        .into();
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| sign_err(&e))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| sign_err(&e))?
        .into_parts();
    // The query in the order AWS's own presigners write it: the request's parameters, the
    // X-Amz-* ones, the signature last.
    let mut token = url.split_off("http://".len());
    let mut signature = None;
    for (name, value) in instructions.params() {
        if *name == "X-Amz-Signature" {
            signature = Some(value);
            continue;
        }
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&uri_encode(value));
    }
    let signature = signature.ok_or_else(|| IamError::Sign("no signature".into()))?;
    token.push_str("&X-Amz-Signature=");
    token.push_str(signature);
    Ok(Token {
        user: settings.user_id.clone(),
        token,
    })
}

/// Percent-encodes everything but SigV4's unreserved characters (`A-Z a-z 0-9 - _ . ~`).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Where credentials come from.
enum Source {
    /// aws-config's default chain, built on first use (it needs the runtime).
    Chain(OnceCell<SharedCredentialsProvider>),
    /// A provider handed in (tests; embedding).
    Provider(SharedCredentialsProvider),
}

struct Shared {
    settings: IamSettings,
    source: Source,
    /// The last credentials and when they were fetched. The lock also makes one fetch serve
    /// every connection that needs credentials at the same time.
    cached: Mutex<Option<(Credentials, SystemTime)>>,
}

/// Mints tokens for `upstream.iam`. Cheap to clone; every upstream connection shares one.
#[derive(Clone)]
pub struct IamAuth {
    shared: Arc<Shared>,
    clock: Clock,
    reauth_every: Duration,
}

impl fmt::Debug for IamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamAuth")
            .field("settings", &self.shared.settings)
            .field("reauth_every", &self.reauth_every)
            .finish_non_exhaustive()
    }
}

impl IamAuth {
    /// Credentials from the standard chain, read from the process environment on first use.
    pub fn new(settings: IamSettings) -> Self {
        Self::build(settings, Source::Chain(OnceCell::new()))
    }

    /// Credentials from `provider` instead of the standard chain.
    pub fn with_provider(
        settings: IamSettings,
        provider: impl ProvideCredentials + 'static,
    ) -> Self {
        Self::build(
            settings,
            Source::Provider(SharedCredentialsProvider::new(provider)),
        )
    }

    fn build(settings: IamSettings, source: Source) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                source,
                cached: Mutex::new(None),
            }),
            clock: Arc::new(SystemTime::now),
            reauth_every: REAUTH_EVERY,
        }
    }

    /// Signs with this clock instead of the system's (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Re-authenticates live connections this often instead of every 10 to 11 hours (tests).
    pub fn with_reauth_every(mut self, every: Duration) -> Self {
        self.reauth_every = every;
        self
    }

    pub fn settings(&self) -> &IamSettings {
        &self.shared.settings
    }

    /// How long after an AUTH the connection should authenticate again: a random point in the
    /// last eleventh of the re-auth period.
    pub fn reauth_delay(&self) -> Duration {
        let every = self.reauth_every;
        let spread = every / 11;
        let jitter = if spread.is_zero() {
            0
        } else {
            rand::rng().random_range(0..=spread.as_micros() as u64)
        };
        every - Duration::from_micros(jitter)
    }

    /// A fresh token, signed now.
    pub async fn token(&self) -> Result<Token, IamError> {
        let creds = self.credentials().await?;
        presign(&self.shared.settings, &creds, (self.clock)())
    }

    /// Credentials good for at least a few more minutes: the cached ones, or fresh ones from
    /// the provider when those are close to expiry. If a refresh fails while the cached
    /// credentials have not expired yet, those are used (the provider may be back later).
    async fn credentials(&self) -> Result<Credentials, IamError> {
        let mut cached = self.shared.cached.lock().await;
        let now = (self.clock)();
        if let Some((c, fetched)) = cached.as_ref() {
            if fresh(c, *fetched, now) {
                return Ok(c.clone());
            }
        }
        let provider = self.provider().await;
        let fetched =
            match tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(IamError::Credentials(error_chain(&e))),
                Err(_) => Err(IamError::Timeout(CREDENTIALS_TIMEOUT)),
            };
        match fetched {
            Ok(c) => {
                tracing::debug!(
                    expires_in = ?c.expiry().and_then(|e| e.duration_since(now).ok()),
                    "AWS credentials fetched for ElastiCache IAM auth"
                );
                *cached = Some((c.clone(), now));
                Ok(c)
            }
            Err(e) => match cached.as_ref() {
                // A token is checked only when it is sent, moments after signing.
                Some((c, _)) if c.expiry().is_some_and(|exp| exp > now + LAST_USE) => {
                    tracing::warn!(error = %e, "AWS credentials refresh failed; signing with the current ones until they expire");
                    Ok(c.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn provider(&self) -> SharedCredentialsProvider {
        match &self.shared.source {
            Source::Provider(p) => p.clone(),
            Source::Chain(cell) => cell
                .get_or_init(|| default_chain(&self.shared.settings.region))
                .await
                .clone(),
        }
    }
}

/// Whether cached credentials may still sign: those with an expiry until a margin before it,
/// those without one (static keys) for a while after they were read.
fn fresh(c: &Credentials, fetched: SystemTime, now: SystemTime) -> bool {
    match c.expiry() {
        Some(exp) => exp > now + CREDENTIALS_MARGIN,
        None => now < fetched + CREDENTIALS_TTL,
    }
}

/// An error and its sources, one line (the chain reports why each provider had nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// aws-config's default credential chain, over an HTTPS client that uses the rustls and ring
/// already in the build (aws-config's own default client would add aws-lc).
async fn default_chain(region: &str) -> SharedCredentialsProvider {
    use aws_config::default_provider::credentials::DefaultCredentialsChain;
    use aws_config::provider_config::ProviderConfig;
    use aws_config::Region;
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let region = Region::new(region.to_string());
    let conf = ProviderConfig::without_region()
        .with_http_client(http)
        .with_region(Some(region.clone()));
    let chain = DefaultCredentialsChain::builder()
        .configure(conf)
        .region(region)
        .build()
        .await;
    SharedCredentialsProvider::new(chain)
}

/// Mints the token for a connection's handshake when IAM auth is configured; the error names
/// the upstream like any other handshake failure.
pub(crate) async fn handshake_token(
    iam: Option<&IamAuth>,
    addr: &Arc<str>,
) -> Result<Option<Token>, crate::error::UpstreamError> {
    let Some(iam) = iam else {
        return Ok(None);
    };
    iam.token()
        .await
        .map(Some)
        .map_err(|e| crate::error::UpstreamError::Handshake {
            addr: addr.clone(),
            detail: format!("ElastiCache IAM token: {e}").into(),
        })
}

/// Re-authenticates one live connection for as long as it lives: after each AUTH, waits
/// [`IamAuth::reauth_delay`], mints a fresh token and hands it to `send`, which sends
/// `AUTH <user> <token>` on the connection and reports the upstream's answer. Returns the
/// error that should close the connection (the upstream refused the token); a token that
/// cannot be minted is tried again after [`REAUTH_RETRY`], since the connection has time left.
pub(crate) async fn reauthenticate<F, Fut>(
    iam: &IamAuth,
    addr: &Arc<str>,
    mut send: F,
) -> crate::error::UpstreamError
where
    F: FnMut(Token) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::error::UpstreamError>>,
{
    let mut delay = iam.reauth_delay();
    loop {
        tokio::time::sleep(delay).await;
        match handshake_token(Some(iam), addr).await {
            Ok(Some(token)) => match send(token).await {
                Ok(()) => {
                    tracing::debug!(upstream = %addr, "upstream connection re-authenticated (IAM)");
                    delay = iam.reauth_delay();
                }
                Err(e) => return e,
            },
            Ok(None) => unreachable!("handshake_token mints when given IAM settings"),
            Err(e) => {
                tracing::warn!(upstream = %addr, error = %e, "cannot re-authenticate an upstream connection yet; trying again");
                delay = REAUTH_RETRY;
            }
        }
    }
}

#[cfg(test)]
mod tests;
