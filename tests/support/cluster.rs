//! A real Redis Cluster for tests: 3 primaries and 3 replicas on free loopback ports, created
//! with `redis-cli --cluster create` and killed when dropped.

use super::{claim_port, free_port, redis_pid, require_binary, wait_for_child_port};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    /// Every node's port (the first three were created as primaries).
    pub ports: Vec<u16>,
    /// With `start_tls`: every node's TLS port, in the order of `ports`.
    pub tls_ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A port `p` free now, with the cluster bus port `p + 10000` free as well.
fn free_cluster_port(taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        if p > 55_000 || taken.contains(&p) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() && claim_port(p + 10_000)
        {
            return p;
        }
    }
}

/// TLS for every node of a cluster: clients and the cluster bus (`tls-cluster yes`, so the
/// nodes announce their TLS ports), client certificates not required (as on ElastiCache). Each
/// node keeps a plaintext port for the tests' own setup.
pub struct ClusterTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    pub fn start_tls(tls: &ClusterTls) -> Self {
        Self::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<&ClusterTls>) -> Self {
        require_binary("redis-server", "redis-server");
        require_binary("redis-cli", "redis-tools");
        let dir = tempfile::tempdir().expect("temp dir for cluster config");
        let mut c = Self {
            ports: Vec::new(),
            tls_ports: Vec::new(),
            children: Vec::new(),
            _dir: dir,
        };
        while c.ports.len() < 6 {
            let port = free_cluster_port(&c.ports);
            let mut taken = c.ports.clone();
            taken.extend(&c.tls_ports);
            taken.push(port);
            let tls_port = tls.map(|_| free_cluster_port(&taken));
            let mut tls_args: Vec<String> = Vec::new();
            if let (Some(t), Some(tp)) = (tls, tls_port) {
                let path = |p: &std::path::PathBuf| p.display().to_string();
                tls_args = vec![
                    "--tls-port".into(),
                    tp.to_string(),
                    "--tls-cert-file".into(),
                    path(&t.cert),
                    "--tls-key-file".into(),
                    path(&t.key),
                    "--tls-ca-cert-file".into(),
                    path(&t.ca),
                    "--tls-auth-clients".into(),
                    "no".into(),
                    "--tls-cluster".into(),
                    "yes".into(),
                    "--tls-replication".into(),
                    "yes".into(),
                ];
            }
            let child = Command::new("redis-server")
                .args(&tls_args)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "5000",
                    "--dir",
                    &c._dir.path().display().to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut child = child;
            let pid = child.id();
            let up = wait_for_child_port(&mut child, port, Duration::from_secs(10));
            c.children.push(child);
            // A node that could not bind (its port or bus port taken) exited: try another.
            if up && redis_pid(port) == Some(pid) {
                c.ports.push(port);
                c.tls_ports.extend(tls_port);
            } else if let Some(mut lost) = c.children.pop() {
                // Another listener took the port first: try another.
                let _ = lost.kill();
                let _ = lost.wait();
            }
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok();
        c
    }

    /// Waits until every node says `cluster_state:ok` and sees all three primaries.
    fn wait_ok(&self) {
        let start = Instant::now();
        for &p in &self.ports {
            loop {
                let info = cli(p, &["CLUSTER", "INFO"]);
                let shards = cli(p, &["CLUSTER", "SLOTS"]);
                if info.contains("cluster_state:ok") && shards.lines().count() >= 3 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "cluster not ok on {p}: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis://` URL of the first node (the seed).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// The ports of the nodes that are primaries now, each with the slot ranges it serves.
    pub fn primaries(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        // Asked of the first node that answers (one may have been killed).
        let text = self
            .ports
            .iter()
            .map(|&p| cli(p, &["CLUSTER", "NODES"]))
            .find(|t| t.contains("myself"))
            .unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // A node serving no slot is no primary that matters (and, just after creation,
            // may be a replica not yet known as one).
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("node address");
            let ranges = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            out.push((port, ranges));
        }
        out
    }

    /// The primary serving `slot` now.
    pub fn primary_of(&self, slot: u16) -> u16 {
        self.primaries()
            .into_iter()
            .find(|(_, r)| r.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|(p, _)| p)
            .expect("every slot is served")
    }

    /// Moves `slot` from its primary to the primary `to`, keys and all, and tells every
    /// primary. With `finish = false` it stops half-way (the slot MIGRATING at its source,
    /// IMPORTING at `to`) after moving only `keys`.
    /// A primary other than `port`: where a test moves a slot.
    pub fn other_primary(&self, port: u16) -> u16 {
        self.primaries()
            .into_iter()
            .map(|(p, _)| p)
            .find(|&p| p != port)
            .expect("a cluster of several primaries")
    }

    pub fn migrate(&self, slot: u16, to: u16, keys: Option<&[&str]>) {
        let from = self.primary_of(slot);
        let from_id = cli(from, &["CLUSTER", "MYID"]);
        let to_id = cli(to, &["CLUSTER", "MYID"]);
        let s = slot.to_string();
        ok(cli(
            to,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", from_id.trim()],
        ));
        ok(cli(
            from,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", to_id.trim()],
        ));
        let keys: Vec<String> = match keys {
            Some(k) => k.iter().map(|s| s.to_string()).collect(),
            None => cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100000"])
                .lines()
                .map(str::to_string)
                .filter(|k| !k.is_empty())
                .collect(),
        };
        if !keys.is_empty() {
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let out = cli(from, &args);
            assert!(out.contains("OK"), "MIGRATE: {out}");
        }
    }

    /// Ends a migration begun by `migrate`: the slot belongs to `to` on every primary.
    pub fn finish_migration(&self, slot: u16, to: u16) {
        let to_id = cli(to, &["CLUSTER", "MYID"]);
        let s = slot.to_string();
        for (p, _) in self.primaries() {
            ok(cli(p, &["CLUSTER", "SETSLOT", &s, "NODE", to_id.trim()]));
        }
        self.wait_ok();
    }

    /// A manual failover of the primary at `port`: its replica, once in sync, takes over
    /// (`CLUSTER FAILOVER` waits for it to have every write of its primary). The new primary's
    /// port.
    pub fn fail_over(&self, port: u16) -> u16 {
        let id = cli(port, &["CLUSTER", "MYID"]);
        let replica = *self
            .ports
            .iter()
            .find(|&&p| {
                cli(p, &["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.contains("myself,slave") && l.contains(id.trim()))
            })
            .expect("the primary has a replica");
        let start = Instant::now();
        while !cli(replica, &["INFO", "replication"]).contains("master_link_status:up") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "replica never synced"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(cli(replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
        while !cli(replica, &["ROLE"]).starts_with("master") {
            assert!(start.elapsed() < Duration::from_secs(20), "no failover");
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// Kills the node at `port` (as a crash would).
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|&p| p == port) {
            let _ = self.children[i].kill();
            let _ = self.children[i].wait();
        }
    }

    /// A direct connection to one node.
    pub async fn node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node directly")
    }
}

fn ok(out: String) {
    assert!(out.trim() == "OK", "expected OK, got {out:?}");
}

/// Runs one command on the node at `port` with redis-cli; its output as text.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
