//! Upstream URLs: `redis://[user:pass@]host:port[/db]`, or `rediss://` for TLS, parsed once at
//! start.

use std::fmt;

/// A parsed upstream address with its credentials. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `rediss://`: connections are TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("redis://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("rediss://") {
            (true, r)
        } else {
            return Err(format!(
                "{:?} must start with redis:// (or rediss:// for TLS)",
                redact(s)
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)),
                    Some(percent_decode(p)),
                ),
                None => (None, Some(percent_decode(ui))),
            },
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [::1]:6379
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| format!("{:?}: unclosed '['", redact(s)))?;
            (h.to_string(), after.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err(format!("{:?} has no host", redact(s)));
        }
        let port = if port.is_empty() {
            6379
        } else {
            port.parse().map_err(|_| {
                format!(
                    "{:?}: port {port:?} is not a number from 1 to 65535",
                    redact(s)
                )
            })?
        };
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| format!("{:?}: database {path:?} is not a number", redact(s)))?
        };
        Ok(Self {
            tls,
            host,
            port,
            db,
            username,
            password,
        })
    }

    /// `host:port`, for connecting and for logs.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", if self.tls { "rediss://" } else { "redis://" })?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:********@")?,
            (None, Some(_)) => write!(f, ":********@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.addr(), self.db)
    }
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with any password replaced by `********`, for logs and `check-config`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{}{}:********{}", &url[..scheme_end + 3], user, &rest[at..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credentials_port_and_db() {
        let u = UpstreamUrl::parse("redis://app:p%40ss@cache.local:6390/2").unwrap();
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!((u.host.as_str(), u.port, u.db), ("cache.local", 6390, 2));
        let u = UpstreamUrl::parse("redis://:secret@h").unwrap();
        assert_eq!(
            (u.username, u.password.as_deref(), u.port),
            (None, Some("secret"), 6379)
        );
        assert_eq!(
            UpstreamUrl::parse("redis://[::1]:7000").unwrap().addr(),
            "[::1]:7000"
        );
    }

    #[test]
    fn rediss_means_tls() {
        let u = UpstreamUrl::parse("rediss://app:pw@cache.example:6380").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("cache.example", 6380));
        assert_eq!(u.to_string(), "rediss://app:********@cache.example:6380/0");
        assert!(!UpstreamUrl::parse("redis://h").unwrap().tls);
    }

    #[test]
    fn rejects_bad_urls_without_echoing_the_password() {
        let e = UpstreamUrl::parse("http://u:hunter2@h").unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("redis://"), "{e}");
        assert!(UpstreamUrl::parse("redis://h:99999").is_err());
        assert!(UpstreamUrl::parse("redis://h/x").is_err());
    }

    #[test]
    fn display_masks_the_password() {
        let u = UpstreamUrl::parse("redis://u:hunter2@h:1/0").unwrap();
        assert_eq!(u.to_string(), "redis://u:********@h:1/0");
        assert_eq!(redact("redis://u:hunter2@h:1"), "redis://u:********@h:1");
    }
}
