//! proxy.toml is the reference: it parses, validates, documents every key, and the env table
//! covers every key. The binary rejects bad config with exit code 64 before binding.

use cacheside::config::{env_name, Config, ENV_KEYS};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

mod support;

fn shipped() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"))
        .expect("proxy.toml at the crate root")
}

/// `section.key` for every key written in proxy.toml, set or commented out (`# key = ...`); a
/// commented-out table (`# [upstream.iam]`) is a section of its own.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim();
        let body = l.strip_prefix("# ").unwrap_or(l);
        if let Some(s) = body.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim_matches(['[', ']']).to_string();
            continue;
        }
        if let Some((k, _)) = body.split_once(" = ") {
            if !k.contains(' ') && !section.is_empty() {
                keys.insert(format!("{section}.{k}"));
            }
        }
    }
    keys
}

fn leaf_keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        // Arrays of tables ([[cache]]) are documented by their own keys and set only in the file.
        toml::Value::Array(_) => {}
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(&p, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn shipped_proxy_toml_parses_and_validates() {
    let c = Config::from_toml(&shipped(), "proxy.toml").expect("proxy.toml parses");
    let v = c.validate().expect("proxy.toml validates");
    assert!(
        v.listen.ip().is_loopback(),
        "the shipped config listens on localhost"
    );
}

#[test]
fn shipped_proxy_toml_states_every_default() {
    let file = Config::from_toml(&shipped(), "proxy.toml").unwrap();
    // The example rule is the one thing the shipped file adds to the defaults.
    let defaults = Config {
        cache: file.cache.clone(),
        ..Config::default()
    };
    assert_eq!(file, defaults, "proxy.toml and Config::default() disagree");
    assert_eq!(file.cache.len(), 1);
    assert!(
        file.upstream.url.is_none(),
        "the shipped file starts in standalone mode"
    );
}

#[test]
fn every_key_is_documented_and_has_an_env_variable() {
    let documented = documented_keys(&shipped());
    let env: BTreeSet<String> = ENV_KEYS.iter().map(|(k, _)| k.to_string()).collect();
    let mut defaults = BTreeSet::new();
    leaf_keys(
        "",
        &toml::Value::try_from(Config::default()).unwrap(),
        &mut defaults,
    );
    for k in &defaults {
        assert!(documented.contains(k), "{k} is not in proxy.toml");
        assert!(env.contains(k), "{k} has no CACHESIDE_ variable");
    }
    for k in &env {
        assert!(
            documented.contains(k),
            "env key {k} is not documented in proxy.toml"
        );
    }
}

#[test]
fn env_variables_override_the_file_for_every_key_kind() {
    let vars: HashMap<String, String> = [
        (env_name("server.max_clients"), "7".to_string()),
        (
            env_name("upstream.url"),
            "redis://10.0.0.1:6379".to_string(),
        ),
        (env_name("server.max_bulk_len"), "1MiB".to_string()),
    ]
    .into_iter()
    .collect();
    let c = Config::from_toml(&shipped(), "proxy.toml")
        .unwrap()
        .with_env(&vars)
        .unwrap();
    assert_eq!(c.server.max_clients, 7);
    assert_eq!(c.upstream.url.as_deref(), Some("redis://10.0.0.1:6379"));
    assert_eq!(c.server.max_bulk_len.bytes(), 1 << 20);
}

fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacheside"));
    cmd.args(args).current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cacheside");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_64_naming_the_key_before_binding() {
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (code, _, err) = run_binary(&["--listen", &listen, "--upstream", "http://h:1"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("upstream.url"), "{err}");
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "nothing was bound"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nmax_clients = \"many\"\n").unwrap();
    let (code, _, err) = run_binary(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("line 2"),
        "TOML errors keep line and column: {err}"
    );

    let (code, _, err) = run_binary(
        &["check-config"],
        &[
            ("CACHESIDE_UPSTREAM_CONNECTIONS", "0"),
            ("CACHESIDE_UPSTREAM_URL", "redis://h"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("upstream.connections"), "{err}");
}

#[test]
fn iam_settings_come_from_env_and_bad_ones_exit_64_naming_the_key() {
    let iam = [
        ("CACHESIDE_UPSTREAM_URL", "redis://cache:6379"),
        ("CACHESIDE_UPSTREAM_IAM_REGION", "eu-west-1"),
        ("CACHESIDE_UPSTREAM_IAM_CACHE_NAME", "orders-cache"),
        ("CACHESIDE_UPSTREAM_IAM_USER_ID", "cacheside"),
        ("CACHESIDE_UPSTREAM_IAM_SERVERLESS", "true"),
        // What the credential chain would read: never echoed.
        ("AWS_ACCESS_KEY_ID", "AKIDCHECKCONFIG"),
        ("AWS_SECRET_ACCESS_KEY", "secret-key-never-printed"),
        ("AWS_SESSION_TOKEN", "session-token-never-printed"),
    ];
    let (code, out, err) = run_binary(&["check-config"], &iam);
    assert_eq!(code, 0, "{err}");
    let printed = Config::from_toml(&out, "stdout").expect("check-config prints valid TOML");
    let i = printed.upstream.iam.expect("[upstream.iam] printed");
    assert_eq!(
        (
            i.region.as_str(),
            i.cache_name.as_str(),
            i.user_id.as_str(),
            i.serverless
        ),
        ("eu-west-1", "orders-cache", "cacheside", true)
    );
    for secret in [
        "secret-key-never-printed",
        "session-token-never-printed",
        "X-Amz-Signature",
    ] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }

    let without_region: Vec<_> = iam
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CACHESIDE_UPSTREAM_IAM_REGION")
        .collect();
    let (code, _, err) = run_binary(&["check-config"], &without_region);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("upstream.iam.region: must be set"), "{err}");

    let (code, _, err) = run_binary(
        &[
            "check-config",
            "--upstream",
            "redis://cacheside:hunter2@cache:6379",
        ],
        &iam,
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("upstream.url: has a password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let (code, out, err) = run_binary(
        &[
            "check-config",
            "--upstream",
            "redis://app:hunter2@cache:6379/0",
        ],
        &[("CACHESIDE_SERVER_REQUIREPASS", "s3cret")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("redis://app:********@cache:6379/0"), "{out}");
    assert!(!out.contains("hunter2") && !out.contains("s3cret"), "{out}");
    let printed = Config::from_toml(&out, "stdout").expect("check-config prints valid TOML");
    assert_eq!(printed.server.listen, "127.0.0.1:6380");
}

#[test]
fn check_config_masks_the_password_of_a_tls_url_with_an_rbac_user() {
    let (code, out, err) = run_binary(
        &[
            "check-config",
            "--upstream",
            "rediss://app:hunter2@cache:6379",
        ],
        &[("CACHESIDE_UPSTREAM_TLS_INSECURE_SKIP_VERIFY", "false")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rediss://app:********@cache:6379"), "{out}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "{out}{err}"
    );
}
