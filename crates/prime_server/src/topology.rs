//! The topology file: one TOML file that describes a whole deployment (front servers, stages,
//! their endpoints, pool sizes, deadlines, limits, drain and logging), so that
//! `prime_serverd --config FILE` runs all of it in one process and `prime_httpd`,
//! `prime_proxyd` and `prime_workerd` run one piece each from the same file.
//!
//! ```
//! let t = prime_server::topology::Topology::parse(r#"
//!     drain_seconds = 5
//!     [[server]]
//!     listen = "tcp://*:8002"
//!     loopback = "ipc:///tmp/ps-doc/loopback"
//!     interrupt = "ipc:///tmp/ps-doc/interrupt"
//!     [[stage]]
//!     name = "parse"
//!     work = "prime_parse"
//!     upstream = "ipc:///tmp/ps-doc/parse_in"
//!     downstream = "ipc:///tmp/ps-doc/parse_out"
//!     [[stage]]
//!     name = "test"
//!     work = "prime_test"
//!     upstream = "ipc:///tmp/ps-doc/test_in"
//!     downstream = "ipc:///tmp/ps-doc/test_out"
//!     workers = 4
//! "#).unwrap();
//! assert_eq!(t.stages[1].workers, 4);
//! assert_eq!(t.worker_downstream(0), Some("ipc:///tmp/ps-doc/test_in"));
//! ```
//!
//! Unknown keys and bad values are rejected with a message naming the key. Endpoints stay text
//! here, checked by [`Topology::parse`] (so its errors can name the stage and key); the daemons
//! turn them into [`Endpoint`]s where they hand them to the library.

use crate::endpoint::Endpoint;
use crate::security::{self, FrontKeys, ProxyKeys, WorkerKeys};
use crate::transport::{Keypair, PublicKey};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A whole deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Seconds to keep accepting and serving after SIGTERM/SIGINT while health checks answer
    /// 503 (default 28, the C++ daemons'; see [`crate::shutdown`]).
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
    /// Seconds then given to what is in flight, accepting nothing new, before the rest is
    /// answered 503 and the process exits (default 1: with the drain, 29 s, inside the 30 s a
    /// Kubernetes pod is given to stop).
    #[serde(default = "default_shutdown")]
    pub shutdown_seconds: u64,
    /// `text` (default) or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Heartbeat timing between proxies and workers.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// The largest frame any zmq socket of the deployment takes in (see
    /// [`Topology::max_message_bytes`] for the default and
    /// [`Context`](crate::transport::Context) for what is limited).
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// The front servers (one or more; each gets its own answers).
    #[serde(rename = "server")]
    pub servers: Vec<ServerSection>,
    /// The stages, in pipeline order.
    #[serde(rename = "stage")]
    pub stages: Vec<StageSection>,
    /// CURVE keys for every zmq endpoint; without it the deployment's zmq traffic is plain.
    #[serde(default)]
    pub security: Option<SecuritySection>,
    /// The folder of the file the topology was loaded from: key folders are relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `[security]`: with it, every zmq socket of the deployment (except `inproc://` ones, whose
/// messages never leave the process) uses CURVE, and every bound socket admits only the keys of
/// the roles that connect to it (see [`crate::security`]). Each `[[server]]` then needs a `key`
/// and each `[[stage]]` a `proxy_key` and a `worker_key`: names of key pairs written by
/// `prime_keygen NAME` into the `keys` folder. A daemon reads the secret file of its own role
/// only, and the public files of the others.
///
/// A role's key may be a list, for a rotation: the role uses the first, and every listed key
/// is admitted wherever the role is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// The folder of the key files, relative to the topology file (default `keys`).
    #[serde(default = "default_keys_dir")]
    pub keys: String,
    /// The zmq clients the fronts' `zmq_listen` endpoints admit.
    #[serde(default, deserialize_with = "one_or_many")]
    pub clients: Vec<String>,
}

fn default_keys_dir() -> String {
    "keys".into()
}

/// A key name or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The client protocol of a front server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 on hyper.
    #[default]
    Http,
    /// Netstrings.
    Netstring,
}

/// Heartbeat timing.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Milliseconds between heartbeats (default 2500).
    #[serde(default = "default_hb_interval")]
    pub interval_ms: u64,
    /// Missed heartbeats before a peer counts as dead (default 3).
    #[serde(default = "default_liveness")]
    pub liveness: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: default_hb_interval(),
            liveness: default_liveness(),
        }
    }
}

impl HeartbeatConfig {
    /// As the library's type.
    pub fn heartbeat(&self) -> crate::heartbeat::Heartbeat {
        crate::heartbeat::Heartbeat {
            interval: Duration::from_millis(self.interval_ms),
            liveness: self.liveness,
        }
    }
}

/// One front server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Its name, for `--server NAME` (default `front`).
    #[serde(default = "default_server_name")]
    pub name: String,
    /// Where clients connect: `tcp://*:8002`, `tcp://127.0.0.1:8002` or `host:port`.
    pub listen: String,
    /// `http` (default) or `netstring`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Where workers send replies (bound by the server).
    pub loopback: String,
    /// Where workers listen for interrupts (bound by the server).
    pub interrupt: String,
    /// Seconds before a request is answered 504 (0 = never; default 60).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Requests in flight before 503 (default 10,000).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Client connections open at once; one beyond is refused (HTTP: 503 with `Retry-After`,
    /// then closed). Default: from the process's open-file limit, less a reserve for zmq
    /// ([`crate::fd_limit::max_connections_for`]), shared among the fronts of one process.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Largest request body (default 10 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Seconds to send a request head; also the keep-alive idle limit (default 30).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// A path answered by the server itself (200, or 503 while draining).
    #[serde(default)]
    pub health_path: Option<String>,
    /// One log line per request.
    #[serde(default)]
    pub access_log: bool,
    /// Also serve zmq clients (REQ/DEALER) on a ROUTER bound here, e.g. `tcp://*:8003`.
    #[serde(default)]
    pub zmq_listen: Option<String>,
    /// With `[security]`: the front's key pair name (or a list: the first is used, all are
    /// admitted by stage 1's proxy).
    #[serde(default, deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    /// Where `prime_httpd` serves its Prometheus metrics on a listener of its own
    /// (`127.0.0.1:9100`; default: none).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The path of the client port answered with the process's Prometheus metrics (default
    /// `/metrics`; `""` turns it off, e.g. when the port is public).
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with the certificate chain in this PEM file,
    /// leaf first; needs `tls_key`. Relative to the topology file. Re-read on SIGHUP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, PKCS#1 or SEC1). Relative to the topology
    /// file. Re-read on SIGHUP.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

impl ServerSection {
    /// A front server listening on `listen`, with its loopback and interrupt endpoints, called
    /// `front`, every other key at the file's default: what a daemon without a topology file
    /// starts from before its command line's values are applied.
    pub fn new(listen: &str, loopback: &str, interrupt: &str) -> ServerSection {
        ServerSection {
            name: default_server_name(),
            listen: listen.into(),
            protocol: Protocol::default(),
            loopback: loopback.into(),
            interrupt: interrupt.into(),
            timeout_seconds: default_timeout(),
            max_in_flight: default_in_flight(),
            max_connections: None,
            max_body_bytes: default_max_body(),
            header_timeout_seconds: default_header_timeout(),
            health_path: None,
            access_log: false,
            zmq_listen: None,
            key: Vec::new(),
            metrics_listen: None,
            metrics_path: default_metrics_path(),
            tls_cert: None,
            tls_key: None,
        }
    }

    /// The certificate and key files, if the front serves HTTPS; an error if only one of them
    /// is given, or TLS is asked of a protocol other than HTTP.
    pub fn tls_files(&self) -> Result<Option<(&Path, &Path)>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err("tls_cert needs tls_key (the certificate's private key)".into()),
            (None, Some(_)) => {
                Err("tls_key needs tls_cert (the certificate it is the key of)".into())
            }
            (Some(_), Some(_)) if self.protocol != Protocol::Http => {
                Err("TLS is served with protocol = \"http\" only".into())
            }
            (Some(c), Some(k)) => Ok(Some((c, k))),
        }
    }

    /// The request deadline.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_seconds > 0).then(|| Duration::from_secs(self.timeout_seconds))
    }
}

/// One stage: its proxy's endpoints and its worker pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// Its name, for `--stage NAME`.
    pub name: String,
    /// What its workers run: a name the worker daemon knows (`prime_parse`, `prime_test`,
    /// `echo`).
    pub work: String,
    /// The proxy's upstream endpoint (the server or the previous stage sends jobs here).
    pub upstream: String,
    /// The proxy's downstream endpoint (this stage's workers connect here).
    pub downstream: String,
    /// Worker threads (per worker process; default 2).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Jobs waiting for a worker before 503 (default 4096).
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// Bytes of payload the waiting jobs may hold together before 503 (default 256 MiB).
    #[serde(default = "default_queue_limit_bytes")]
    pub queue_limit_bytes: usize,
    /// How many workers may be handed one job when the ones holding it die (default 2).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u8,
    /// With `[security]`: the proxy's key pair name.
    #[serde(default)]
    pub proxy_key: Option<String>,
    /// With `[security]`: the workers' key pair name (or a list: the first is used, all are
    /// admitted by their proxy, the next stage's proxy and the fronts).
    #[serde(default, deserialize_with = "one_or_many")]
    pub worker_key: Vec<String>,
    /// Where `prime_proxyd` of this stage serves its Prometheus metrics (default: none).
    #[serde(default)]
    pub proxy_metrics_listen: Option<String>,
    /// Where `prime_workerd` of this stage serves its Prometheus metrics (default: none; a
    /// second worker process on the same host needs `--metrics-listen` of its own).
    #[serde(default)]
    pub workers_metrics_listen: Option<String>,
}

impl StageSection {
    /// A stage called `name` whose proxy binds `upstream` and `downstream`, running `work`,
    /// every other key at the file's default (see [`ServerSection::new`]).
    pub fn new(name: &str, work: &str, upstream: &str, downstream: &str) -> StageSection {
        StageSection {
            name: name.into(),
            work: work.into(),
            upstream: upstream.into(),
            downstream: downstream.into(),
            workers: default_workers(),
            queue_limit: default_queue_limit(),
            queue_limit_bytes: default_queue_limit_bytes(),
            max_attempts: default_max_attempts(),
            proxy_key: None,
            worker_key: Vec::new(),
            proxy_metrics_listen: None,
            workers_metrics_listen: None,
        }
    }
}

/// What a request head may add to a body in one frame: the HTTP front's default largest head.
const HEAD_ALLOWANCE: usize = 64 * 1024;

/// The default largest frame for fronts whose largest body is `max_body`: four times the body
/// plus 64 KiB, so that every request they accept fits (its head and its body travel as frames of
/// their own) and a reply may be a few times its request.
pub fn message_limit_for_body(max_body: usize) -> usize {
    max_body.saturating_mul(4).saturating_add(HEAD_ALLOWANCE)
}

/// Whether `max_message_bytes` lets a request body of `max_body` bytes through; the reason
/// when not.
pub fn check_message_limit(max_message_bytes: usize, max_body: usize) -> Result<(), String> {
    let least = max_body.saturating_add(HEAD_ALLOWANCE);
    if max_message_bytes < least {
        return Err(format!(
            "{max_message_bytes} is too small: a request body may be {max_body} bytes, and the \
             limit must be at least that plus 64 KiB ({least})"
        ));
    }
    Ok(())
}

fn default_drain() -> u64 {
    crate::shutdown::DEFAULT_DRAIN.as_secs()
}
fn default_shutdown() -> u64 {
    crate::shutdown::DEFAULT_SHUTDOWN.as_secs()
}
fn default_hb_interval() -> u64 {
    2500
}
fn default_liveness() -> u32 {
    3
}
fn default_server_name() -> String {
    "front".into()
}
fn default_timeout() -> u64 {
    60
}
fn default_in_flight() -> usize {
    10_000
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_header_timeout() -> u64 {
    30
}
fn default_workers() -> usize {
    2
}
fn default_queue_limit() -> usize {
    4096
}
fn default_queue_limit_bytes() -> usize {
    crate::proxy::DEFAULT_QUEUE_LIMIT_BYTES
}
fn default_max_attempts() -> u8 {
    2
}

/// What is wrong with a topology file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type (the message names the key).
    #[error("{0}")]
    Syntax(String),
    /// A value that parses but makes no sense.
    #[error("{key}: {why}")]
    Invalid {
        /// The key, dotted (`stage.parse.workers`).
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// A metrics listener's address: `host:port` (an IP address).
fn check_listen(key: &str, addr: Option<&str>) -> Result<(), TopologyError> {
    match addr {
        Some(a) if a.parse::<std::net::SocketAddr>().is_err() => Err(invalid(
            key,
            format!("expected an address and port such as 127.0.0.1:9100, got {a:?}"),
        )),
        _ => Ok(()),
    }
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> TopologyError {
    TopologyError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

impl Topology {
    /// Reads and checks a topology file.
    pub fn load(path: &str) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_string(),
            source,
        })?;
        let mut t = Topology::parse(&text)?;
        t.dir = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        // TLS files are named relative to the file, like the key folder.
        for s in &mut t.servers {
            for file in [&mut s.tls_cert, &mut s.tls_key].into_iter().flatten() {
                if file.is_relative() {
                    *file = t.dir.join(&*file);
                }
            }
        }
        Ok(t)
    }

    /// Parses and checks a topology.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let mut t: Topology =
            toml::from_str(text).map_err(|e| TopologyError::Syntax(e.to_string()))?;
        t.dir = PathBuf::from(".");
        t.check()?;
        t.check_keys()?;
        Ok(t)
    }

    fn check(&self) -> Result<(), TopologyError> {
        if self.servers.is_empty() {
            return Err(invalid("server", "at least one [[server]] is needed"));
        }
        if self.stages.is_empty() {
            return Err(invalid("stage", "at least one [[stage]] is needed"));
        }
        if self.heartbeat.interval_ms == 0 || self.heartbeat.liveness == 0 {
            return Err(invalid(
                "heartbeat",
                "interval_ms and liveness must be positive",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.servers {
            let key = |k: &str| format!("server.{}.{k}", s.name);
            if !names.insert(format!("server {}", s.name)) {
                return Err(invalid(format!("server.{}", s.name), "duplicate name"));
            }
            crate::protocol::listen_addrs(&s.listen).map_err(|e| invalid(key("listen"), e))?;
            for (k, ep) in [("loopback", &s.loopback), ("interrupt", &s.interrupt)] {
                Endpoint::parse(ep).map_err(|e| invalid(key(k), e.to_string()))?;
            }
            if let Some(ep) = &s.zmq_listen {
                Endpoint::parse(ep).map_err(|e| invalid(key("zmq_listen"), e.to_string()))?;
            }
            if s.max_in_flight == 0 {
                return Err(invalid(key("max_in_flight"), "must be at least 1"));
            }
            if s.max_connections == Some(0) {
                return Err(invalid(key("max_connections"), "must be at least 1"));
            }
            if s.header_timeout_seconds == 0 {
                return Err(invalid(key("header_timeout_seconds"), "must be at least 1"));
            }
            if let Some(h) = &s.health_path {
                if !h.starts_with('/') {
                    return Err(invalid(key("health_path"), "must start with /"));
                }
            }
            if !s.metrics_path.is_empty() && !s.metrics_path.starts_with('/') {
                return Err(invalid(
                    key("metrics_path"),
                    "must start with / (or be \"\": off)",
                ));
            }
            check_listen(&key("metrics_listen"), s.metrics_listen.as_deref())?;
            s.tls_files().map_err(|why| invalid(key("tls_cert"), why))?;
            if let Some(limit) = self.max_message_bytes {
                check_message_limit(limit, s.max_body_bytes).map_err(|why| {
                    invalid(
                        "max_message_bytes",
                        format!("{why} (server.{}.max_body_bytes)", s.name),
                    )
                })?;
            }
        }
        for s in &self.stages {
            let key = |k: &str| format!("stage.{}.{k}", s.name);
            if !names.insert(format!("stage {}", s.name)) {
                return Err(invalid(format!("stage.{}", s.name), "duplicate name"));
            }
            for (k, ep) in [("upstream", &s.upstream), ("downstream", &s.downstream)] {
                Endpoint::parse(ep).map_err(|e| invalid(key(k), e.to_string()))?;
            }
            if s.workers == 0 {
                return Err(invalid(key("workers"), "must be at least 1"));
            }
            if s.queue_limit == 0 {
                return Err(invalid(key("queue_limit"), "must be at least 1"));
            }
            if s.queue_limit_bytes == 0 {
                return Err(invalid(key("queue_limit_bytes"), "must be at least 1"));
            }
            if s.max_attempts == 0 {
                return Err(invalid(key("max_attempts"), "must be at least 1"));
            }
            check_listen(
                &key("proxy_metrics_listen"),
                s.proxy_metrics_listen.as_deref(),
            )?;
            check_listen(
                &key("workers_metrics_listen"),
                s.workers_metrics_listen.as_deref(),
            )?;
        }
        Ok(())
    }

    /// The stage called `name`, with its index.
    pub fn stage(&self, name: &str) -> Result<(usize, &StageSection), TopologyError> {
        self.stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
                invalid(
                    "--stage",
                    format!("no stage {name:?} (the file has {known:?})"),
                )
            })
    }

    /// The server called `name` (or the only one when `name` is `None`).
    pub fn server(&self, name: Option<&str>) -> Result<&ServerSection, TopologyError> {
        match name {
            Some(n) => self
                .servers
                .iter()
                .find(|s| s.name == n)
                .ok_or_else(|| invalid("--server", format!("no server {n:?}"))),
            None if self.servers.len() == 1 => Ok(&self.servers[0]),
            None => Err(invalid(
                "--server",
                "the file has several servers: name one",
            )),
        }
    }

    /// Where stage `i`'s workers send what they forward: the next stage's upstream.
    pub fn worker_downstream(&self, i: usize) -> Option<&str> {
        self.stages.get(i + 1).map(|s| s.upstream.as_str())
    }

    /// Every server's loopback endpoint.
    pub fn loopbacks(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.loopback.clone()).collect()
    }

    /// Every server's interrupt endpoint.
    pub fn interrupts(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.interrupt.clone()).collect()
    }

    /// With `[security]`, every role has its key names; without it, none has any.
    fn check_keys(&self) -> Result<(), TopologyError> {
        let secure = self.security.is_some();
        let mut roles: Vec<(String, bool)> = Vec::new();
        for s in &self.servers {
            roles.push((format!("server.{}.key", s.name), !s.key.is_empty()));
        }
        for s in &self.stages {
            roles.push((format!("stage.{}.proxy_key", s.name), s.proxy_key.is_some()));
            roles.push((
                format!("stage.{}.worker_key", s.name),
                !s.worker_key.is_empty(),
            ));
        }
        for (key, given) in roles {
            match (secure, given) {
                (true, false) => {
                    return Err(invalid(key, "[security] is on: every role needs its key"))
                }
                (false, true) => {
                    return Err(invalid(key, "keys are used only with a [security] section"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The key pair base path of key `name` (`keys/front`), or `None` without `[security]`.
    fn key_base(&self, name: &str) -> Option<PathBuf> {
        let sec = self.security.as_ref()?;
        Some(self.dir.join(&sec.keys).join(name))
    }

    fn public_key(&self, role: &str, name: &str) -> Result<PublicKey, TopologyError> {
        let base = self.key_base(name).expect("called with [security] only");
        security::read_public(&security::public_path(&base))
            .map_err(|e| invalid(role, e.to_string()))
    }

    fn public_keys(&self, role: &str, names: &[String]) -> Result<Vec<PublicKey>, TopologyError> {
        names.iter().map(|n| self.public_key(role, n)).collect()
    }

    fn keypair(&self, role: &str, name: &str) -> Result<Keypair, TopologyError> {
        let base = self.key_base(name).expect("called with [security] only");
        security::read_secret(&security::secret_path(&base))
            .map_err(|e| invalid(role, e.to_string()))
    }

    /// Every worker key of every stage: what the fronts admit.
    fn all_worker_keys(&self) -> Result<Vec<PublicKey>, TopologyError> {
        let mut all = Vec::new();
        for s in &self.stages {
            all.extend(self.public_keys(&format!("stage.{}.worker_key", s.name), &s.worker_key)?);
        }
        Ok(all)
    }

    /// The keys of front `server` (reads its secret key file), or `None` without `[security]`.
    pub fn front_keys(&self, server: &ServerSection) -> Result<Option<FrontKeys>, TopologyError> {
        let Some(sec) = &self.security else {
            return Ok(None);
        };
        let role = format!("server.{}.key", server.name);
        let first = &self.stages[0];
        let proxy_role = format!("stage.{}.proxy_key", first.name);
        Ok(Some(FrontKeys {
            keypair: self.keypair(&role, &server.key[0])?,
            proxy: self.public_key(&proxy_role, first.proxy_key.as_deref().unwrap_or_default())?,
            workers: self.all_worker_keys()?,
            clients: self.public_keys("security.clients", &sec.clients)?,
        }))
    }

    /// The keys of stage `i`'s proxy (reads its secret key file), or `None` without
    /// `[security]`.
    pub fn proxy_keys(&self, i: usize) -> Result<Option<ProxyKeys>, TopologyError> {
        if self.security.is_none() {
            return Ok(None);
        }
        let s = &self.stages[i];
        let role = format!("stage.{}.proxy_key", s.name);
        let senders = match i.checked_sub(1).map(|p| &self.stages[p]) {
            None => {
                let mut fronts = Vec::new();
                for f in &self.servers {
                    fronts.extend(self.public_keys(&format!("server.{}.key", f.name), &f.key)?);
                }
                fronts
            }
            Some(prev) => {
                self.public_keys(&format!("stage.{}.worker_key", prev.name), &prev.worker_key)?
            }
        };
        Ok(Some(ProxyKeys {
            keypair: self.keypair(&role, s.proxy_key.as_deref().unwrap_or_default())?,
            senders,
            workers: self.public_keys(&format!("stage.{}.worker_key", s.name), &s.worker_key)?,
        }))
    }

    /// The keys of stage `i`'s workers (reads their secret key file), or `None` without
    /// `[security]`. The front keys are in the order of [`Topology::loopbacks`].
    pub fn worker_keys(&self, i: usize) -> Result<Option<WorkerKeys>, TopologyError> {
        if self.security.is_none() {
            return Ok(None);
        }
        let s = &self.stages[i];
        let proxy_of = |stage: &StageSection| {
            let role = format!("stage.{}.proxy_key", stage.name);
            self.public_key(&role, stage.proxy_key.as_deref().unwrap_or_default())
        };
        let mut fronts = Vec::new();
        for f in &self.servers {
            fronts.push(self.public_key(&format!("server.{}.key", f.name), &f.key[0])?);
        }
        Ok(Some(WorkerKeys {
            keypair: self.keypair(&format!("stage.{}.worker_key", s.name), &s.worker_key[0])?,
            proxy: proxy_of(s)?,
            next_proxy: self.stages.get(i + 1).map(proxy_of).transpose()?,
            fronts,
        }))
    }

    /// The largest frame every zmq socket of the deployment takes in: `max_message_bytes`, or by
    /// default [`message_limit_for_body`] of the largest `max_body_bytes` of its servers (42 MiB
    /// with the default 10 MiB bodies).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.unwrap_or_else(|| {
            let body = self.servers.iter().map(|s| s.max_body_bytes).max();
            message_limit_for_body(body.unwrap_or_else(default_max_body))
        })
    }

    /// The drain period.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// The drain and the shutdown time after it.
    pub fn grace(&self) -> crate::shutdown::Grace {
        crate::shutdown::Grace {
            drain: self.drain(),
            shutdown: Duration::from_secs(self.shutdown_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[server]]
        listen = "127.0.0.1:8002"
        loopback = "ipc:///tmp/t/loopback"
        interrupt = "ipc:///tmp/t/interrupt"
        [[stage]]
        name = "a"
        work = "echo"
        upstream = "ipc:///tmp/t/a_in"
        downstream = "ipc:///tmp/t/a_out"
    "#;

    #[test]
    fn defaults() {
        let t = Topology::parse(GOOD).unwrap();
        assert_eq!(t.drain_seconds, 28);
        assert_eq!(t.shutdown_seconds, 1);
        assert_eq!(t.servers[0].name, "front");
        assert_eq!(t.servers[0].timeout(), Some(Duration::from_secs(60)));
        assert_eq!(t.stages[0].workers, 2);
        assert_eq!(t.servers[0].max_connections, None);
        assert_eq!(t.worker_downstream(0), None);
        assert_eq!(
            t.max_message_bytes(),
            crate::transport::DEFAULT_MAX_MESSAGE_BYTES
        );
    }

    #[test]
    fn the_message_limit_follows_the_largest_body_unless_given() {
        let big = GOOD.replace(
            "interrupt = \"ipc:///tmp/t/interrupt\"",
            "interrupt = \"ipc:///tmp/t/interrupt\"\nmax_body_bytes = 100000000",
        );
        let t = Topology::parse(&big).unwrap();
        assert_eq!(t.max_message_bytes(), 400_000_000 + 65536);
        let t = Topology::parse(&format!("max_message_bytes = 20000000\n{GOOD}")).unwrap();
        assert_eq!(t.max_message_bytes(), 20_000_000);
        let e = Topology::parse(&format!("max_message_bytes = 1000000\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_message_bytes") && e.contains("server.front"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Topology::parse(&GOOD.replace("work = \"echo\"", "work = \"echo\"\nwokers = 3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wokers"), "{e}");
        let e = Topology::parse(&GOOD.replace("work = \"echo\"", "work = \"echo\"\nworkers = -1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
        let e = Topology::parse(&GOOD.replace("work = \"echo\"", "work = \"echo\"\nworkers = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage.a.workers"), "{e}");
        let e = Topology::parse(&GOOD.replace("ipc:///tmp/t/a_in", "udp://x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage.a.upstream"), "{e}");
        let e = Topology::parse(&GOOD.replace("127.0.0.1:8002", "nowhere"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.front.listen"), "{e}");
        let e = Topology::parse(&GOOD.replace(
            "interrupt = \"ipc:///tmp/t/interrupt\"",
            "interrupt = \"ipc:///tmp/t/interrupt\"\nmax_connections = 0",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("server.front.max_connections"), "{e}");
        let e = Topology::parse(&format!("log_format = \"xml\"\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_format"), "{e}");
    }

    #[test]
    fn tls_files_come_in_pairs_for_http_and_are_relative_to_the_file() {
        let with = |extra: &str| {
            GOOD.replace(
                "interrupt = \"ipc:///tmp/t/interrupt\"",
                &format!("interrupt = \"ipc:///tmp/t/interrupt\"\n{extra}"),
            )
        };
        for (extra, says) in [
            ("tls_cert = \"c.pem\"", "needs tls_key"),
            ("tls_key = \"k.pem\"", "needs tls_cert"),
            (
                "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nprotocol = \"netstring\"",
                "http",
            ),
        ] {
            let e = Topology::parse(&with(extra)).unwrap_err().to_string();
            assert!(
                e.contains("server.front.tls_cert") && e.contains(says),
                "{e}"
            );
        }
        let dir = std::env::temp_dir().join(format!("ps-topo-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            with("tls_cert = \"tls/c.pem\"\ntls_key = \"/etc/k.pem\""),
        )
        .unwrap();
        let t = Topology::load(path.to_str().unwrap()).unwrap();
        assert_eq!(t.servers[0].tls_cert, Some(dir.join("tls/c.pem")));
        assert_eq!(t.servers[0].tls_key, Some(PathBuf::from("/etc/k.pem")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_example_topology_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Topology::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "examples not found in {dir}");
    }

    #[test]
    fn each_bound_socket_admits_the_roles_meant_to_connect_to_it() {
        let dir = std::env::temp_dir().join(format!("ps-topo-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("k")).unwrap();
        let mut key = std::collections::HashMap::new();
        for name in ["front", "p1", "w1", "w1-new", "p2", "w2"] {
            key.insert(name, security::generate(&dir.join("k").join(name)).unwrap());
        }
        let text = r#"
            [security]
            keys = "k"
            [[server]]
            listen = "127.0.0.1:8002"
            loopback = "tcp://127.0.0.1:5555"
            interrupt = "tcp://127.0.0.1:5556"
            key = "front"
            [[stage]]
            name = "a"
            work = "echo"
            upstream = "tcp://127.0.0.1:5557"
            downstream = "tcp://127.0.0.1:5558"
            proxy_key = "p1"
            worker_key = ["w1-new", "w1"]
            [[stage]]
            name = "b"
            work = "echo"
            upstream = "tcp://127.0.0.1:5559"
            downstream = "tcp://127.0.0.1:5560"
            proxy_key = "p2"
            worker_key = "w2"
        "#;
        let mut t = Topology::parse(text).unwrap();
        t.dir = dir.clone();
        let front = t.front_keys(&t.servers[0]).unwrap().unwrap();
        assert_eq!(front.keypair.public(), key["front"]);
        assert_eq!(front.proxy, key["p1"]);
        assert_eq!(front.workers, vec![key["w1-new"], key["w1"], key["w2"]]);
        let p1 = t.proxy_keys(0).unwrap().unwrap();
        assert_eq!(p1.keypair.public(), key["p1"]);
        assert_eq!(p1.senders, vec![key["front"]]);
        assert_eq!(p1.workers, vec![key["w1-new"], key["w1"]]);
        let p2 = t.proxy_keys(1).unwrap().unwrap();
        assert_eq!(p2.senders, vec![key["w1-new"], key["w1"]]);
        assert_eq!(p2.workers, vec![key["w2"]]);
        // A rotating role uses the first of its keys.
        let w1 = t.worker_keys(0).unwrap().unwrap();
        assert_eq!(w1.keypair.public(), key["w1-new"]);
        assert_eq!((w1.proxy, w1.next_proxy), (key["p1"], Some(key["p2"])));
        assert_eq!(w1.fronts, vec![key["front"]]);
        let w2 = t.worker_keys(1).unwrap().unwrap();
        assert_eq!((w2.proxy, w2.next_proxy), (key["p2"], None));
        // Without [security]: no keys, and keys without it are refused.
        assert!(Topology::parse(GOOD)
            .unwrap()
            .front_keys(&t.servers[0])
            .unwrap()
            .is_none());
        let stray = text.replace("[security]\n            keys = \"k\"", "");
        let err = Topology::parse(&stray).unwrap_err().to_string();
        assert!(err.contains("server.front.key"), "{err}");
        let half = text.replace("proxy_key = \"p2\"", "");
        let err = Topology::parse(&half).unwrap_err().to_string();
        assert!(err.contains("stage.b.proxy_key"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
