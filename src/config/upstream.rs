//! `[upstream]` checked: the URL, the credentials (an RBAC user, a password file re-read on
//! every connect) and TLS for `rediss://`.

use super::validate::positive;
use super::{ConfigError, UpstreamConfig, UpstreamUrl};
use crate::transport::{UpstreamTls, UpstreamTlsOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach the upstream Redis.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Host, port, db and the credentials written in the URL (or `upstream.username`).
    pub url: UpstreamUrl,
    /// Read again on every connect, so a rotated Secret is used from the next reconnect on.
    pub password_file: Option<PathBuf>,
    /// Set for `rediss://`.
    pub tls: Option<UpstreamTls>,
    /// How often the TLS files are checked for a renewal (zero: never).
    pub tls_reload_interval: Duration,
    pub connections: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// `upstream.iam`: ElastiCache IAM tokens instead of a password.
    pub iam: Option<crate::tier::redis::iam::IamAuth>,
    pub mode: Mode,
    /// Where read-only commands go (writes always go to the primary).
    pub read_from: ReadFrom,
    /// `upstream.reader_url`: the replicas' endpoint, with the URL's credentials and TLS options.
    pub reader: Option<Box<UpstreamSettings>>,
}

/// `upstream.read_from`: where plain read-only commands are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Primary,
    /// Always a replica; its errors are the client's.
    Replica,
    /// A replica while one is connected, else the primary.
    PreferReplica,
}

/// Whether the upstream is one Redis or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Asks the seed node (`INFO cluster`) at start.
    Auto,
    Standalone,
    Cluster,
}

impl UpstreamSettings {
    /// The password to authenticate with now: the file's current contents, else the URL's.
    pub fn password(&self) -> Result<Option<String>, String> {
        match &self.password_file {
            Some(path) => secret_from_file(path)
                .map(Some)
                .map_err(|m| format!("upstream.password_file: {m}")),
            None => Ok(self.url.password.clone()),
        }
    }
}

/// A one-line secret file (a mounted Kubernetes Secret): its contents without the trailing
/// newline. Never empty.
pub(super) fn secret_from_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

pub(super) fn validate(u: &UpstreamConfig) -> Result<Option<UpstreamSettings>, ConfigError> {
    let raw = match u.url.as_deref().map(str::trim) {
        None | Some("") => return Ok(None),
        Some(raw) => raw,
    };
    let mut url = UpstreamUrl::parse(raw).map_err(|m| ConfigError::invalid("upstream.url", m))?;
    if let Some(user) = &u.username {
        if user.is_empty() || user.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "upstream.username",
                format!("{user:?} must be one word"),
            ));
        }
        match &url.username {
            Some(in_url) if in_url != user => {
                return Err(ConfigError::invalid(
                    "upstream.username",
                    format!(
                        "{user:?} differs from the user in upstream.url ({in_url:?}): set it in one place"
                    ),
                ))
            }
            _ => url.username = Some(user.clone()),
        }
    }
    if let Some(f) = &u.password_file {
        // Read now so a missing file fails at start; read again on every connect.
        secret_from_file(f).map_err(|m| ConfigError::invalid("upstream.password_file", m))?;
    }
    if url.username.is_some()
        && url.password.is_none()
        && u.password_file.is_none()
        && u.iam.is_none()
    {
        return Err(ConfigError::invalid(
            "upstream.username",
            "a user needs a password: in upstream.url (user:password@host) or upstream.password_file",
        ));
    }
    if u.connections == 0 || u.connections > 64 {
        return Err(ConfigError::invalid(
            "upstream.connections",
            format!("{} must be between 1 and 64", u.connections),
        ));
    }
    let reconnect_min = positive("upstream.reconnect_min", u.reconnect_min.get())?;
    let reconnect_max = positive("upstream.reconnect_max", u.reconnect_max.get())?;
    if reconnect_max < reconnect_min {
        return Err(ConfigError::invalid(
            "upstream.reconnect_max",
            format!(
                "\"{}\" must be >= upstream.reconnect_min (\"{}\")",
                u.reconnect_max, u.reconnect_min
            ),
        ));
    }
    let tls = validate_tls(u, &url)?;
    let iam = super::iam::validate(u, &url)?;
    let mode = match u.mode.as_str() {
        "auto" => Mode::Auto,
        "standalone" => Mode::Standalone,
        "cluster" => Mode::Cluster,
        other => {
            return Err(ConfigError::invalid(
                "upstream.mode",
                format!("{other:?} must be \"auto\", \"standalone\" or \"cluster\""),
            ))
        }
    };
    if mode == Mode::Cluster && url.db != 0 {
        return Err(ConfigError::invalid(
            "upstream.url",
            format!(
                "database {} in the URL: a Redis Cluster has only database 0",
                url.db
            ),
        ));
    }
    let read_from = match u.read_from.as_str() {
        "primary" => ReadFrom::Primary,
        "replica" => ReadFrom::Replica,
        "prefer_replica" => ReadFrom::PreferReplica,
        other => {
            return Err(ConfigError::invalid(
                "upstream.read_from",
                format!("{other:?} must be \"primary\", \"replica\" or \"prefer_replica\""),
            ))
        }
    };
    let mut settings = UpstreamSettings {
        iam,
        url,
        password_file: u.password_file.clone(),
        tls,
        tls_reload_interval: u.tls_reload_interval.get(),
        connections: u.connections,
        connect_timeout: positive("upstream.connect_timeout", u.connect_timeout.get())?,
        command_timeout: positive("upstream.command_timeout", u.command_timeout.get())?,
        reconnect_min,
        reconnect_max,
        mode,
        read_from,
        reader: None,
    };
    settings.reader = reader(u, &settings)?;
    Ok(Some(settings))
}

/// `upstream.reader_url`: the same settings, to the reader endpoint's host and port. Its
/// scheme must match the URL's; credentials and database not written in it are the URL's.
fn reader(
    u: &UpstreamConfig,
    primary: &UpstreamSettings,
) -> Result<Option<Box<UpstreamSettings>>, ConfigError> {
    let raw = match u.reader_url.as_deref().map(str::trim) {
        // A cluster's replicas come from its slot map; `auto` may find one (and otherwise
        // reads go to the primary, with a warning at start).
        None | Some("") if primary.mode != Mode::Standalone => return Ok(None),
        None | Some("") => {
            if primary.read_from != ReadFrom::Primary {
                return Err(ConfigError::invalid(
                    "upstream.read_from",
                    "replicas need upstream.reader_url (the replication group's reader endpoint)",
                ));
            }
            return Ok(None);
        }
        Some(raw) => raw,
    };
    if primary.mode == Mode::Cluster {
        return Err(ConfigError::invalid(
            "upstream.reader_url",
            "is for a replication group; a Redis Cluster's replicas come from its slot map",
        ));
    }
    if primary.read_from == ReadFrom::Primary {
        return Err(ConfigError::invalid(
            "upstream.reader_url",
            "is set but upstream.read_from = \"primary\" never uses it: set read_from to \"replica\" or \"prefer_replica\"",
        ));
    }
    let mut url =
        UpstreamUrl::parse(raw).map_err(|m| ConfigError::invalid("upstream.reader_url", m))?;
    if url.tls != primary.url.tls {
        return Err(ConfigError::invalid(
            "upstream.reader_url",
            "must use the same scheme as upstream.url (both redis:// or both rediss://)",
        ));
    }
    if url.username.is_none() && url.password.is_none() {
        url.username = primary.url.username.clone();
        url.password = primary.url.password.clone();
    }
    if raw.trim_end_matches('/').matches('/').count() <= 2 {
        url.db = primary.url.db;
    } else if url.db != primary.url.db {
        return Err(ConfigError::invalid(
            "upstream.reader_url",
            format!(
                "database {} differs from upstream.url's ({})",
                url.db, primary.url.db
            ),
        ));
    }
    let tls = validate_tls(u, &url)?;
    Ok(Some(Box::new(UpstreamSettings {
        url,
        tls,
        reader: None,
        ..primary.clone()
    })))
}

fn validate_tls(u: &UpstreamConfig, url: &UpstreamUrl) -> Result<Option<UpstreamTls>, ConfigError> {
    let set = [
        ("upstream.tls_ca_file", u.tls_ca_file.is_some()),
        ("upstream.tls_cert_file", u.tls_cert_file.is_some()),
        ("upstream.tls_key_file", u.tls_key_file.is_some()),
        (
            "upstream.tls_insecure_skip_verify",
            u.tls_insecure_skip_verify,
        ),
    ];
    if !url.tls {
        if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
            return Err(ConfigError::invalid(
                *key,
                "is set but upstream.url is redis:// (plaintext): use rediss:// for TLS",
            ));
        }
        return Ok(None);
    }
    let client_cert = match (&u.tls_cert_file, &u.tls_key_file) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "upstream.tls_key_file",
                "must be set with upstream.tls_cert_file",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "upstream.tls_cert_file",
                "must be set with upstream.tls_key_file",
            ))
        }
    };
    if u.tls_insecure_skip_verify && u.tls_ca_file.is_some() {
        return Err(ConfigError::invalid(
            "upstream.tls_insecure_skip_verify",
            "true verifies nothing, so upstream.tls_ca_file would be ignored: set one or the other",
        ));
    }
    let options = UpstreamTlsOptions {
        ca_file: u.tls_ca_file.as_deref(),
        client_cert,
        insecure_skip_verify: u.tls_insecure_skip_verify,
    };
    UpstreamTls::new(&url.host, options)
        .map(Some)
        .map_err(|e| ConfigError::invalid(format!("upstream.{}", e.key), e.message))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use crate::config::validation_error as err;

    #[test]
    fn tls_keys_need_rediss_and_come_in_pairs() {
        assert!(
            err("[upstream]\nurl = \"redis://h\"\ntls_ca_file = \"/ca.pem\"\n")
                .starts_with("upstream.tls_ca_file: is set but upstream.url is redis://")
        );
        assert!(
            err("[upstream]\nurl = \"rediss://h\"\ntls_cert_file = \"/c.pem\"\n")
                .starts_with("upstream.tls_key_file: must be set with")
        );
        assert!(
            err("[upstream]\nurl = \"rediss://h\"\ntls_ca_file = \"/nonexistent.pem\"\n")
                .starts_with("upstream.tls_ca_file: /nonexistent.pem")
        );
        let v = Config::from_toml("[upstream]\nurl = \"rediss://h\"\n", "t")
            .and_then(Config::validate)
            .unwrap();
        assert!(v.upstream.unwrap().tls.is_some());
    }

    #[test]
    fn mode_is_one_of_three_words() {
        assert!(err("[upstream]\nurl = \"redis://h\"\nmode = \"sharded\"\n")
            .starts_with("upstream.mode: \"sharded\" must be \"auto\""));
        assert!(
            err("[upstream]\nurl = \"redis://h/2\"\nmode = \"cluster\"\n")
                .starts_with("upstream.url: database 2")
        );
        for (word, mode) in [
            ("auto", super::Mode::Auto),
            ("standalone", super::Mode::Standalone),
            ("cluster", super::Mode::Cluster),
        ] {
            let toml = format!("[upstream]\nurl = \"redis://h\"\nmode = \"{word}\"\n");
            let v = Config::from_toml(&toml, "t")
                .and_then(Config::validate)
                .unwrap();
            assert_eq!(v.upstream.unwrap().mode, mode);
        }
        let v = Config::from_toml("[upstream]\nurl = \"redis://h\"\n", "t")
            .and_then(Config::validate)
            .unwrap();
        assert_eq!(v.upstream.unwrap().mode, super::Mode::Auto);
        let cached = "[upstream]\nurl = \"redis://h\"\nmode = \"cluster\"\n[[cache]]\nkeys = \"a:*\"\nttl = \"1s\"\n";
        assert!(Config::from_toml(cached, "t")
            .and_then(Config::validate)
            .is_ok());
        let tracked = format!("{cached}[hot]\ncoherence = \"tracking\"\n");
        assert!(err(&tracked)
            .starts_with("hot.coherence: \"tracking\" does not work on a Redis Cluster"));
        // Read-through runs on a cluster (a key's lease and markers share its slot).
        let mapped = "[upstream]\nurl = \"redis://h\"\nmode = \"cluster\"\n[postgres]\nurl = \"postgres://u@h/db\"\n[[mapping]]\nname = \"p\"\nkey = \"p:{id}\"\nquery = \"SELECT 1 WHERE $1::int > 0\"\nttl = \"1m\"\n";
        let v = Config::from_toml(mapped, "t")
            .and_then(Config::validate)
            .unwrap();
        assert_eq!(v.mappings.len(), 1);
    }

    #[test]
    fn users_need_a_password_and_one_name() {
        assert!(err("[upstream]\nurl = \"redis://h\"\nusername = \"app\"\n")
            .starts_with("upstream.username: a user needs a password"));
        assert!(
            err("[upstream]\nurl = \"redis://app:pw@h\"\nusername = \"other\"\n")
                .starts_with("upstream.username: \"other\" differs")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let toml = format!(
            "[upstream]\nurl = \"redis://h\"\nusername = \"app\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let u = Config::from_toml(&toml, "t")
            .and_then(Config::validate)
            .unwrap()
            .upstream
            .unwrap();
        assert_eq!(u.url.username.as_deref(), Some("app"));
        assert_eq!(u.password().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "rotated\n").unwrap();
        assert_eq!(u.password().unwrap().as_deref(), Some("rotated"));
        assert!(!format!("{u:?}").contains("rotated"));
    }

    #[test]
    fn replicas_need_a_reader_endpoint_of_the_same_kind() {
        assert!(
            err("[upstream]\nurl = \"redis://h\"\nread_from = \"nearest\"\n")
                .starts_with("upstream.read_from: \"nearest\" must be")
        );
        assert!(err(
            "[upstream]\nurl = \"redis://h\"\nmode = \"standalone\"\nread_from = \"replica\"\n"
        )
        .starts_with("upstream.read_from: replicas need upstream.reader_url"));
        assert!(
            err("[upstream]\nurl = \"redis://h\"\nreader_url = \"redis://r\"\n")
                .starts_with("upstream.reader_url: is set but upstream.read_from = \"primary\"")
        );
        assert!(err("[upstream]\nurl = \"rediss://h\"\nread_from = \"replica\"\nreader_url = \"redis://r\"\n")
            .starts_with("upstream.reader_url: must use the same scheme"));
        assert!(err("[upstream]\nurl = \"redis://h/2\"\nread_from = \"replica\"\nreader_url = \"redis://r/3\"\n")
            .starts_with("upstream.reader_url: database 3 differs"));
        let toml = "[upstream]\nurl = \"rediss://app:pw@master.example:6379/2\"\nread_from = \"prefer_replica\"\nreader_url = \"rediss://replica.example:6380\"\n";
        let u = Config::from_toml(toml, "t")
            .and_then(Config::validate)
            .unwrap()
            .upstream
            .unwrap();
        assert_eq!(u.read_from, super::ReadFrom::PreferReplica);
        let r = u.reader.as_ref().unwrap();
        assert_eq!(r.url.addr(), "replica.example:6380");
        assert_eq!((r.url.db, r.url.username.as_deref()), (2, Some("app")));
        assert_eq!(r.url.password.as_deref(), Some("pw"));
        assert!(r.tls.is_some());
    }
}
