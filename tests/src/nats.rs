//! Real `nats-server` processes on loopback for the cluster-mode tests (`../shared/cluster.md`
//! §3.9): one JetStream server or a JetStream cluster, each server with its own ports, config
//! and store directory in a temporary directory, which a test can kill -9, restart, pause and
//! resume. Readiness and leadership are read from each server's HTTP monitoring port, never
//! inferred from elapsed time; every wait is bounded by [`SAFETY`]. The broker is not involved.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::SAFETY;

/// Pause between two readiness probes of the external processes.
const POLL: Duration = Duration::from_millis(50);
/// How long one monitoring request may take: a paused server never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of each server's log a panicking test prints.
const LOG_TAIL_LINES: usize = 40;

/// The `nats-server` binary: `$NATS_SERVER` when set, else the path printed by
/// `scripts/nats-server.sh`, which installs the pinned release on first use. Looked up once
/// per test process; panics with what to do when neither works.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_server_binary)
}

fn find_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NATS_SERVER={} is not a file; unset it or point it at a nats-server binary",
            path.display()
        );
        return path;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-server.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "NATS_SERVER is unset and {} could not run ({e}); set NATS_SERVER to a \
                 nats-server binary",
                script.display()
            )
        });
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        output.status.success() && path.is_file(),
        "NATS_SERVER is unset and {} failed ({}, printed {:?}); set NATS_SERVER to a \
         nats-server binary",
        script.display(),
        output.status,
        path
    );
    path
}

/// A `nats-server` cluster of N JetStream servers on 127.0.0.1, named `n1`…`nN`; index `i`
/// is server `n{i+1}`. Dropping it kills every server and removes their files; when the test
/// is panicking, it first prints the tail of each server's log.
pub struct NatsCluster {
    servers: Vec<Server>,
    http: reqwest::Client,
    // Held for its own drop, which runs after `Drop::drop` has killed and reaped the servers.
    _dir: tempfile::TempDir,
}

struct Server {
    name: String,
    client_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl NatsCluster {
    /// Starts `n` servers and waits until they are ready (see [`NatsCluster::wait_ready`]).
    /// `n = 1` is a single JetStream server; `n > 1` is a JetStream cluster whose servers
    /// route to each other.
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one server");
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        // Client, route and monitoring port per server, all taken before any is released so
        // that no two are the same.
        let ports = free_ports(3 * n);
        let route_ports: Vec<u16> = (0..n).map(|i| ports[3 * i + 1]).collect();
        let servers = (0..n)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let (client_port, route_port, http_port) =
                    (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
                let store = dir.path().join(&name);
                let routes: Vec<String> = route_ports
                    .iter()
                    .filter(|&&port| port != route_port)
                    .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    server_config(&name, client_port, http_port, &store, route_port, &routes),
                )
                .expect("write nats-server config");
                Server {
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port,
                    http_port,
                    config,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            servers,
            http: reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                .build()
                .expect("HTTP client"),
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// The client URL of every server, `nats://127.0.0.1:<port>`, in index order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// The process id of server `i`, or `None` while it is killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].child.as_ref().and_then(Child::id)
    }

    /// Kills server `i` with SIGKILL (also when paused) and waits for it to exit. Its store
    /// directory stays for [`NatsCluster::restart`].
    pub async fn kill(&mut self, i: usize) {
        let server = &mut self.servers[i];
        let mut child = server
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", server.name));
        tokio::time::timeout(SAFETY, child.kill())
            .await
            .unwrap_or_else(|_| panic!("{} exits in time after SIGKILL", server.name))
            .unwrap_or_else(|e| panic!("kill {}: {e}", server.name));
        server.paused = false;
    }

    /// Starts server `i` again with the same config, ports and store directory (killing it
    /// first if it still runs), and waits until the cluster is ready again, this server's
    /// JetStream replicas caught up included.
    pub async fn restart(&mut self, i: usize) {
        if self.servers[i].child.is_some() {
            self.kill(i).await;
        }
        self.spawn(i);
        self.wait_ready().await;
    }

    /// Stops server `i` with SIGSTOP: its sockets stay open but it answers nothing, like a
    /// hung process or a partition. [`NatsCluster::resume`] continues it.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "STOP");
        self.servers[i].paused = true;
    }

    /// Continues a paused server `i` with SIGCONT. It does not wait: call
    /// [`NatsCluster::wait_ready`] to wait until it has rejoined.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "CONT");
        self.servers[i].paused = false;
    }

    /// Waits until every running, unpaused server is ready, and panics with what is missing
    /// after [`SAFETY`]. Ready means:
    /// - the full `/healthz` answers 200: JetStream enabled, in contact and current with the
    ///   meta leader, this server's streams current;
    /// - in a cluster, a running meta leader that every running server names (so a resumed
    ///   old leader has stepped down) and that counts every other running server as current;
    /// - every stream has a leader that all its running replicas name, and that counts each
    ///   of them as current.
    ///
    /// `/healthz` alone is not enough: with nats-server 2.15.1, a server just restarted can
    /// answer 200 once before it has learnt of its streams, then 503 until it catches up.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + SAFETY;
        loop {
            let missing = match self.not_ready().await {
                None => return,
                Some(missing) => missing,
            };
            assert!(
                Instant::now() < deadline,
                "nats-server cluster not ready after {SAFETY:?}: {missing}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The server that leads JetStream stream `stream` (in account `$G`) now, or `None` when
    /// it has no leader (an election is under way) or the stream does not exist. A server
    /// counts as leader when its own `/jsz` says so and a quorum of the stream's replicas
    /// name it: followers keep naming a killed leader until the next election, and a resumed
    /// old leader may still claim the role until it hears of its successor.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let reports = self.jsz_reports().await;
        self.elected(&reports, |report| stream_cluster(report, stream))
            .map(|(leader, _)| leader)
    }

    /// Waits until `stream` has a leader (see [`NatsCluster::stream_leader`]) and returns it;
    /// panics after [`SAFETY`].
    pub async fn wait_stream_leader(&self, stream: &str) -> usize {
        let deadline = Instant::now() + SAFETY;
        loop {
            if let Some(leader) = self.stream_leader(stream).await {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} has no leader after {SAFETY:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The server that leads the JetStream meta group (stream and consumer placement), by
    /// the same rule as [`NatsCluster::stream_leader`]; a single server leads itself.
    pub async fn meta_leader(&self) -> Option<usize> {
        let reports = self.jsz_reports().await;
        if self.servers.len() == 1 {
            return reports.first().map(|(i, _)| *i);
        }
        self.elected(&reports, |report| report.get("meta_cluster"))
            .map(|(leader, _)| leader)
    }

    fn spawn(&mut self, i: usize) {
        let binary = server_binary();
        let server = &mut self.servers[i];
        assert!(server.child.is_none(), "{} is already running", server.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .expect("open nats-server log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} for {}: {e}", binary.display(), server.name));
        server.child = Some(child);
        server.paused = false;
    }

    fn signal(&self, i: usize, signal: &str) {
        let server = &self.servers[i];
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("{} is not running", server.name));
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {pid} ({}) failed",
            server.name
        );
    }

    /// The servers that can answer: running and not paused.
    fn live(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.servers[i].child.is_some() && !self.servers[i].paused)
            .collect()
    }

    /// What keeps the cluster from being ready, or `None` when it is.
    async fn not_ready(&self) -> Option<String> {
        let live = self.live();
        if live.is_empty() {
            return Some("no server is running".into());
        }
        let reports = self.jsz_reports().await;
        if reports.len() < live.len() {
            return Some("a running server did not answer /jsz".into());
        }
        let is_live_name = |name: &str| self.index_of(name).is_some_and(|j| live.contains(&j));
        if self.servers.len() > 1 {
            let Some((leader, meta)) = self.elected(&reports, |report| report.get("meta_cluster"))
            else {
                return Some("no JetStream meta leader".into());
            };
            if let Some(missing) =
                self.dissent(&reports, leader, |report| report.get("meta_cluster"))
            {
                return Some(format!("meta group: {missing}"));
            }
            for &j in live.iter().filter(|&&j| j != leader) {
                if !replica_current(meta, &self.servers[j].name) {
                    return Some(format!(
                        "meta leader {} does not count {} as current",
                        self.servers[leader].name, self.servers[j].name
                    ));
                }
            }
        }
        let mut streams: Vec<&str> = reports
            .iter()
            .flat_map(|(_, report)| stream_details(report))
            .filter_map(|stream| stream["name"].as_str())
            .collect();
        streams.sort_unstable();
        streams.dedup();
        for stream in streams {
            let Some((leader, cluster)) =
                self.elected(&reports, |report| stream_cluster(report, stream))
            else {
                return Some(format!("stream {stream} has no leader"));
            };
            if let Some(missing) =
                self.dissent(&reports, leader, |report| stream_cluster(report, stream))
            {
                return Some(format!("stream {stream}: {missing}"));
            }
            for replica in cluster["replicas"].as_array().into_iter().flatten() {
                let name = replica["name"].as_str().unwrap_or_default();
                if is_live_name(name) && replica["current"] != Value::Bool(true) {
                    return Some(format!(
                        "stream {stream}: leader {} does not count {name} as current",
                        self.servers[leader].name
                    ));
                }
            }
        }
        // Last, as a server logs a warning for every failed health check.
        for &i in &live {
            let url = format!("http://127.0.0.1:{}/healthz", self.servers[i].http_port);
            match self.http.get(url).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Some(format!(
                        "{}: /healthz {status} {body}",
                        self.servers[i].name
                    ));
                }
                Err(e) => return Some(format!("{}: /healthz: {e}", self.servers[i].name)),
            }
        }
        None
    }

    /// `/jsz?streams=true` of every live server that answers, with its index.
    async fn jsz_reports(&self) -> Vec<(usize, Value)> {
        let mut reports = Vec::new();
        for i in self.live() {
            let url = format!(
                "http://127.0.0.1:{}/jsz?streams=true",
                self.servers[i].http_port
            );
            let Ok(response) = self.http.get(url).send().await else {
                continue;
            };
            if let Ok(report) = response.json::<Value>().await {
                reports.push((i, report));
            }
        }
        reports
    }

    /// The server whose Raft group view (picked from a `/jsz` report by `group`, an object
    /// with `leader` and the other `replicas`) names itself leader and is named leader by a
    /// quorum of the group; with that server's view of the group.
    fn elected<'a>(
        &self,
        reports: &'a [(usize, Value)],
        group: impl Fn(&'a Value) -> Option<&'a Value>,
    ) -> Option<(usize, &'a Value)> {
        let leader_named_by = |report: &'a Value| group(report)?["leader"].as_str();
        reports.iter().find_map(|(i, report)| {
            let name = self.servers[*i].name.as_str();
            let view = group(report).filter(|view| view["leader"] == name)?;
            // The replicas a leader lists are the group's other members.
            let members = view["replicas"].as_array().map_or(0, Vec::len) + 1;
            let votes = reports
                .iter()
                .filter(|(_, other)| leader_named_by(other) == Some(name))
                .count();
            (votes > members / 2).then_some((*i, view))
        })
    }

    /// A member of the group (picked from each report by `group`) that does not name
    /// `leader` as its leader: one that has not yet heard of the election, or an old leader
    /// that has not yet stepped down.
    fn dissent<'a>(
        &self,
        reports: &'a [(usize, Value)],
        leader: usize,
        group: impl Fn(&'a Value) -> Option<&'a Value>,
    ) -> Option<String> {
        let leader = self.servers[leader].name.as_str();
        reports.iter().find_map(|(i, report)| {
            let named = group(report)?["leader"].as_str().unwrap_or_default();
            (named != leader).then(|| {
                format!(
                    "{} names {named:?} as leader, not {leader}",
                    self.servers[*i].name
                )
            })
        })
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|server| server.name == name)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(child) = server.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        // Reap them, so that no server still writes while the temp dir is removed.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for server in &mut self.servers {
            if let Some(child) = server.child.as_mut() {
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if std::thread::panicking() {
            for server in &self.servers {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                // The harness's own failed /healthz probes would crowd out everything else;
                // `wait_ready` reports the last of them in its panic message.
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|line| !line.contains("Healthcheck failed"))
                    .collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!(
                    "--- nats-server {}: the last {} lines of its log (failed health checks \
                     left out)\n{}",
                    server.name,
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}

/// The config file of one server. Routes list the other servers only; a single server has no
/// cluster block.
fn server_config(
    name: &str,
    client_port: u16,
    http_port: u16,
    store: &Path,
    route_port: u16,
    routes: &[String],
) -> String {
    let store = store.to_str().expect("UTF-8 temp dir");
    assert!(!store.contains('"'), "store path {store} needs no quoting");
    let mut config = String::new();
    let _ = write!(
        config,
        r#"server_name: {name}
listen: "127.0.0.1:{client_port}"
http: "127.0.0.1:{http_port}"
# Notice a dead or paused peer (route or client) in seconds, not minutes.
ping_interval: "2s"
ping_max: 2
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
"#
    );
    if !routes.is_empty() {
        let _ = write!(
            config,
            r#"cluster {{
  name: harness
  listen: "127.0.0.1:{route_port}"
  routes: [{}]
}}
"#,
            routes.join(", ")
        );
    }
    config
}

/// `count` distinct free loopback ports: each is bound to 127.0.0.1:0 and released once all
/// are taken.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local addr").port())
        .collect()
}

/// The streams of account `$G` in a `/jsz?streams=true` report.
fn stream_details(report: &Value) -> impl Iterator<Item = &Value> {
    report["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|account| account["name"] == "$G")
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
}

/// The `cluster` object (`leader`, `replicas`) of `stream` in a `/jsz?streams=true` report.
fn stream_cluster<'a>(report: &'a Value, stream: &str) -> Option<&'a Value> {
    stream_details(report)
        .find(|detail| detail["name"] == stream)
        .and_then(|detail| detail.get("cluster"))
}

/// Whether a Raft group's leader view counts replica `name` as current.
fn replica_current(group: &Value, name: &str) -> bool {
    group["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|replica| replica["name"] == name && replica["current"] == Value::Bool(true))
}
