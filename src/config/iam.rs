//! `[upstream.iam]` checked: the settings that sign ElastiCache IAM tokens.

use super::{ConfigError, UpstreamUrl};

/// `[upstream.iam]`: the settings that sign ElastiCache IAM tokens. A token is the password, so
/// a password from the URL or `password_file` as well is an error, and so is a URL user other
/// than the IAM user.
pub(super) fn validate(
    c: &super::UpstreamConfig,
    url: &UpstreamUrl,
) -> Result<Option<crate::tier::redis::iam::IamAuth>, ConfigError> {
    use crate::tier::redis::iam::{IamAuth, IamSettings};
    let Some(i) = &c.iam else {
        return Ok(None);
    };
    let key = |k: &str| format!("upstream.iam.{k}");
    let word = |k: &str, v: &str, example: &str| {
        if v.is_empty() {
            return Err(ConfigError::invalid(
                key(k),
                format!("must be set, e.g. {example:?}"),
            ));
        }
        if !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::invalid(
                key(k),
                format!("{v:?} must be letters, digits, - or _, e.g. {example:?}"),
            ));
        }
        Ok(())
    };
    word("region", &i.region, "us-east-1")?;
    if i.cache_name.contains('.') {
        return Err(ConfigError::invalid(
            key("cache_name"),
            format!(
                "{:?} must be the replication group id or serverless cache name, not an endpoint",
                i.cache_name
            ),
        ));
    }
    word("cache_name", &i.cache_name, "my-cache")?;
    if i.user_id.is_empty() || i.user_id.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(
            key("user_id"),
            format!(
                "{:?} must be the ElastiCache user id (one word, equal to its user name)",
                i.user_id
            ),
        ));
    }
    if url.password.as_deref().is_some_and(|p| !p.is_empty()) || c.password_file.is_some() {
        let from = if c.password_file.is_some() {
            "upstream.password_file"
        } else {
            "upstream.url"
        };
        return Err(ConfigError::invalid(
            from,
            "has a password, and upstream.iam makes the password an IAM token: use one of them",
        ));
    }
    if let Some(user) = url.username.as_deref().filter(|u| *u != i.user_id) {
        return Err(ConfigError::invalid(
            "upstream.url",
            format!(
                "user {user:?} differs from upstream.iam.user_id {:?} (leave it out of the URL)",
                i.user_id
            ),
        ));
    }
    Ok(Some(IamAuth::new(IamSettings {
        region: i.region.clone(),
        // ElastiCache names are lowercase, and the token signs the name as its host.
        cache_name: i.cache_name.to_ascii_lowercase(),
        user_id: i.user_id.clone(),
        serverless: i.serverless,
    })))
}

#[cfg(test)]
mod tests {
    use crate::config::validation_error as err;
    use crate::config::Config;

    const IAM: &str = "[upstream]\nurl = \"redis://cache:6379\"\n[upstream.iam]\n";

    #[test]
    fn iam_errors_name_the_missing_or_bad_key() {
        let full = "region = \"us-east-1\"\ncache_name = \"my-cache\"\nuser_id = \"app\"\n";
        let without = |k: &str| {
            let body: String = full
                .lines()
                .filter(|l| !l.starts_with(k))
                .map(|l| format!("{l}\n"))
                .collect();
            err(&format!("{IAM}{body}"))
        };
        assert_eq!(
            without("region"),
            "upstream.iam.region: must be set, e.g. \"us-east-1\""
        );
        assert_eq!(
            without("cache_name"),
            "upstream.iam.cache_name: must be set, e.g. \"my-cache\""
        );
        assert!(without("user_id").starts_with("upstream.iam.user_id: \"\" must be"));
        let e = err(&format!(
            "{IAM}region = \"us-east-1\"\ncache_name = \"my-cache.xxxxxx.use1.cache.amazonaws.com\"\nuser_id = \"app\"\n"
        ));
        assert!(
            e.starts_with("upstream.iam.cache_name:") && e.contains("not an endpoint"),
            "{e}"
        );
        let e = err(&format!(
            "{IAM}region = \"US East\"\ncache_name = \"c\"\nuser_id = \"app\"\n"
        ));
        assert!(e.starts_with("upstream.iam.region: \"US East\""), "{e}");
        let e = err(&format!("{IAM}{full}regoin = \"x\"\n"));
        assert!(e.contains("unknown field") && e.contains("regoin"), "{e}");
    }

    #[test]
    fn iam_and_a_password_exclude_each_other() {
        let body =
            "[upstream.iam]\nregion = \"us-east-1\"\ncache_name = \"c\"\nuser_id = \"app\"\n";
        let e = err(&format!(
            "[upstream]\nurl = \"redis://app:hunter2@cache\"\n{body}"
        ));
        assert!(e.starts_with("upstream.url: has a password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err(&format!(
            "[upstream]\nurl = \"redis://other:@cache\"\n{body}"
        ));
        assert!(e.starts_with("upstream.url: user \"other\" differs"), "{e}");
        let ok = Config::from_toml(
            &format!("[upstream]\nurl = \"redis://app:@cache\"\n{body}"),
            "t",
        )
        .unwrap()
        .validate()
        .unwrap();
        let iam = ok.upstream.unwrap().iam.expect("iam settings");
        assert_eq!(iam.settings().user_id, "app");
    }

    #[test]
    fn iam_cache_names_are_lowercased() {
        let v = Config::from_toml(
            &format!("{IAM}region = \"us-east-1\"\ncache_name = \"My-Cache\"\nuser_id = \"app\"\nserverless = true\n"),
            "t",
        )
        .unwrap()
        .validate()
        .unwrap();
        let iam = v.upstream.unwrap().iam.unwrap();
        assert_eq!(iam.settings().cache_name, "my-cache");
        assert!(iam.settings().serverless);
    }
}
