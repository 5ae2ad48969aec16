//! The prime demo deployed across three "hosts" for real (issue 10, "Multi-host, for real"):
//! network namespaces, each with its own address on a private subnet, joined by veth links to a
//! bridge, talking `tcp://` to each other's addresses. No traffic leaves the machine: the
//! namespaces have no link to the root namespace (nor any other).
//!
//! ```text
//!   front host    10.77.0.1  prime_httpd                    ─┐
//!   stage 1 host  10.77.0.2  prime_proxyd, prime_workerd    ─┼─ br0 in a "switch" namespace
//!   stage 2 host  10.77.0.3  prime_proxyd, prime_workerd    ─┘
//! ```
//! (stage 1 runs the demo's `prime_parse`, stage 2 its `prime_test`: an answer names its number).
//!
//! The test reaches the front from inside the front host: each client thread enters the front
//! namespace (`setns`) before it connects, so the test's own namespace needs no link at all.
//! Daemons are started in their host's namespace the same way (between fork and exec).
//!
//! A partition sets the host's port on the switch down (a cable pulled: packets vanish, no
//! connection is reset); a host dies by SIGKILL of every process on it. Requests run all along
//! (a new one every 20 ms, each on its own connection); none may be answered wrong, none may
//! wait past its deadline (5 s), and service must come back once the fault is gone.
//!
//! Needs root and iproute2's `ip`; without them each test says it is skipped and passes. Every
//! namespace (and with it every veth and the bridge) and every process a test makes is removed
//! when it ends, also when it fails; names carry the test process's pid and a nonce, so parallel
//! runs do not collide, and namespaces left by a run that was killed are removed by the next.

mod common;
use common::*;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The front's deadline (`timeout_seconds`).
const DEADLINE: Duration = Duration::from_secs(5);
/// How late after its deadline an answer may come on a loaded machine and still count as on
/// time: the front answers 504 at the deadline; this is scheduling slack, not a grace.
const SLACK: Duration = Duration::from_secs(2);
/// How long a fault lasts: longer than the deadline, so requests that meet it inside the fault
/// must be answered with an error, not wait for the end of it.
const FAULT: Duration = Duration::from_secs(6);
/// A new probe request every …
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Prefix of every namespace these tests make.
const PREFIX: &str = "pmh-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Front,
    Stage1,
    Stage2,
}

const HOSTS: [Host; 3] = [Host::Front, Host::Stage1, Host::Stage2];

impl Host {
    fn name(self) -> &'static str {
        match self {
            Host::Front => "front",
            Host::Stage1 => "s1",
            Host::Stage2 => "s2",
        }
    }

    fn ip(self) -> &'static str {
        match self {
            Host::Front => "10.77.0.1",
            Host::Stage1 => "10.77.0.2",
            Host::Stage2 => "10.77.0.3",
        }
    }
}

/// Runs `ip ARGS`; its error output if it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "iproute2's `ip` is not installed".to_string(),
            _ => format!("`ip {}`: {e}", args.join(" ")),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

/// Removes the namespaces of earlier runs whose process is gone (a run killed before its
/// guards could clean up). Namespaces of a live process (a run in parallel) are left alone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Three host namespaces and a switch namespace holding the bridge; removed on drop (which
/// removes their veths and the bridge with them).
struct Net {
    prefix: String,
    /// The namespaces made so far, to remove.
    made: Vec<String>,
}

impl Net {
    fn create() -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        remove_stale_namespaces();
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut net = Net {
            prefix: format!("{PREFIX}{}-{nonce:x}", std::process::id()),
            made: Vec::new(),
        };
        let sw = net.ns("sw");
        net.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for host in HOSTS {
            let ns = net.host_ns(host);
            net.add_ns(&ns)?;
            let port = format!("p-{}", host.name());
            // Both ends are made inside their namespaces: nothing appears in ours, even briefly.
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.ip()),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    fn host_ns(&self, host: Host) -> String {
        self.ns(host.name())
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.made.push(ns.to_string());
        Ok(())
    }

    /// Sets `host`'s port on the switch up or down: down, the host is cut off (its own
    /// interface keeps its address and routes; what it sends is lost).
    fn link(&self, host: Host, up: bool) {
        let port = format!("p-{}", host.name());
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns("sw"), "link", "set", &port, state]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("could not remove network namespace {ns}: {e}");
            }
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &Path) {
    let f = File::open(ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
    // SAFETY: setns on a descriptor we own; it changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        ns.display(),
        std::io::Error::last_os_error()
    );
}

/// Starts daemon `name` inside network namespace `ns`, its log going to `log`. It is killed if
/// the test's thread ends first (and by [`Proc`]'s drop).
fn start_in(ns: &Path, name: &str, args: &[&str], log: &Path) -> Proc {
    use std::os::unix::process::CommandExt;
    let ns_file = File::open(ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
    let fd = ns_file.as_raw_fd();
    let log = File::options().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(bin(name));
    cmd.args(args).stdout(Stdio::piped()).stderr(log);
    // SAFETY: between fork and exec the closure makes two async-signal-safe system calls on a
    // descriptor that stays open in the parent until spawn returns, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A test process that is killed takes its daemons with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
    drop(ns_file);
    Proc {
        child,
        name: name.to_string(),
    }
}

/// The prime demo across the three hosts: the front on the front host, stage 1 (parse) on the
/// stage 1 host, stage 2 (test) on the stage 2 host, each stage a proxy and a worker process of
/// two threads. Dropping it kills every process, then removes the network; if the test is
/// failing, the tail of each daemon's log is printed first.
struct Deployment {
    procs: Vec<(Host, Proc)>,
    addr: SocketAddr,
    dir: PathBuf,
    cfg: String,
    net: Net,
}

/// Which processes run on `host`: (daemon, stage).
fn daemons(host: Host) -> &'static [(&'static str, &'static str)] {
    match host {
        Host::Front => &[("prime_httpd", "")],
        Host::Stage1 => &[("prime_proxyd", "parse"), ("prime_workerd", "parse")],
        Host::Stage2 => &[("prime_proxyd", "test"), ("prime_workerd", "test")],
    }
}

impl Deployment {
    /// The deployment, serving; `None` (after saying so) where namespaces cannot be made.
    fn start(test: &str) -> Option<Deployment> {
        let net = match Net::create() {
            Ok(net) => net,
            Err(why) => {
                eprintln!(
                    "SKIPPED {test}: cannot make network namespaces here ({why}); \
                     this test needs root and iproute2's `ip netns`"
                );
                return None;
            }
        };
        let dir = temp_dir(&format!("multihost-{test}"));
        let cfg = dir.join("three-hosts.toml");
        std::fs::write(&cfg, topology()).unwrap();
        let mut d = Deployment {
            procs: Vec::new(),
            addr: format!("{}:8002", Host::Front.ip()).parse().unwrap(),
            dir,
            cfg: cfg.to_string_lossy().into_owned(),
            net,
        };
        for host in [Host::Stage2, Host::Stage1, Host::Front] {
            d.start_host(host);
        }
        wait_until("the deployment never answered", || {
            d.ask(next_number()).outcome == Outcome::Right
        });
        Some(d)
    }

    fn ns_path(&self, host: Host) -> PathBuf {
        netns_path(&self.net.host_ns(host))
    }

    /// Starts every process of `host`.
    fn start_host(&mut self, host: Host) {
        for (daemon, stage) in daemons(host) {
            let log = self.dir.join(format!("{}-{daemon}.log", host.name()));
            let mut args = vec!["--config", &self.cfg];
            if !stage.is_empty() {
                args.extend(["--stage", stage]);
            }
            let mut p = start_in(&self.ns_path(host), daemon, &args, &log);
            if host == Host::Front {
                let addr = p.listening();
                assert_eq!(addr, self.addr, "the front listens elsewhere");
            }
            self.procs.push((host, p));
        }
    }

    /// SIGKILLs every process of `host` and waits for them to be gone.
    fn kill_host(&mut self, host: Host) {
        let (dead, alive): (Vec<_>, Vec<_>) = std::mem::take(&mut self.procs)
            .into_iter()
            .partition(|(h, _)| *h == host);
        self.procs = alive;
        for (_, mut p) in dead {
            p.signal("-KILL");
            p.wait_exit(LIMIT);
        }
    }

    /// Fails unless every process is still running (none crashed along the way).
    fn assert_all_alive(&mut self) {
        for (host, p) in &mut self.procs {
            let status = p.child.try_wait().unwrap();
            assert!(
                status.is_none(),
                "{} on {host:?} exited: {status:?}",
                p.name
            );
        }
    }

    /// One request for `n` from inside the front host.
    fn ask(&self, n: u64) -> Asked {
        let (ns, addr) = (self.ns_path(Host::Front), self.addr);
        std::thread::spawn(move || {
            enter(&ns);
            ask(addr, n)
        })
        .join()
        .unwrap()
    }

    /// Starts a new request every [`PROBE_EVERY`], each on its own connection from inside the
    /// front host, until [`Probe::finish`].
    fn probe(&self) -> Probe {
        let (ns, addr) = (self.ns_path(Host::Front), self.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (s, all) = (stop.clone(), asked.clone());
        let thread = std::thread::spawn(move || {
            let mut running = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let (ns, all) = (ns.clone(), all.clone());
                running.push(std::thread::spawn(move || {
                    enter(&ns);
                    let a = ask(addr, next_number());
                    all.lock().unwrap().push(a);
                }));
                std::thread::sleep(PROBE_EVERY);
            }
            for t in running {
                t.join().unwrap();
            }
        });
        Probe {
            stop,
            asked,
            thread: Some(thread),
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, p) in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.clear();
        if std::thread::panicking() {
            eprintln!("logs kept in {}; their tails:", self.dir.display());
            let mut logs: Vec<_> = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("== {}", log.display());
                for l in &lines[lines.len().saturating_sub(25)..] {
                    eprintln!("{l}");
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // `net` drops after this, once no process holds its namespaces.
    }
}

fn topology() -> String {
    let [f, s1, s2] = HOSTS.map(Host::ip);
    format!(
        "drain_seconds = 1
[heartbeat]
interval_ms = 200
liveness = 3
[[server]]
name = \"front\"
listen = \"{f}:8002\"
loopback = \"tcp://{f}:5555\"
interrupt = \"tcp://{f}:5556\"
timeout_seconds = {timeout}
access_log = true
[[stage]]
name = \"parse\"
work = \"prime_parse\"
upstream = \"tcp://{s1}:5557\"
downstream = \"tcp://{s1}:5558\"
workers = 2
[[stage]]
name = \"test\"
work = \"prime_test\"
upstream = \"tcp://{s2}:5559\"
downstream = \"tcp://{s2}:5560\"
workers = 2
",
        timeout = DEADLINE.as_secs()
    )
}

/// A number no other request of this test process asks about, so an answer names its request.
fn next_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000_000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Trial division, independent of the daemons' own.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 200 with this request's own, correct answer.
    Right,
    /// A clean error: 503 or 504.
    Failed(u16),
    /// Anything else: a wrong or foreign answer, another status, no answer at all.
    Wrong(String),
}

#[derive(Debug, Clone)]
struct Asked {
    sent: Instant,
    took: Duration,
    outcome: Outcome,
}

fn ask(addr: SocketAddr, n: u64) -> Asked {
    let sent = Instant::now();
    let answer = TcpStream::connect(addr).ok().and_then(|mut s| {
        s.set_read_timeout(Some(LIMIT)).ok()?;
        http(&mut s, &get(&format!("/is_prime?possible_prime={n}")))
    });
    let took = sent.elapsed();
    let outcome = match answer {
        Some((200, _, body)) => {
            let expected = format!("{{\"possible_prime\":{n},\"is_prime\":{}}}", is_prime(n));
            if body == expected {
                Outcome::Right
            } else {
                Outcome::Wrong(format!("200 with {body:?}, expected {expected:?}"))
            }
        }
        Some((status @ (503 | 504), _, _)) => Outcome::Failed(status),
        Some((status, _, body)) => Outcome::Wrong(format!("{status} {body:?}")),
        None => Outcome::Wrong("no answer (connection failed or closed)".into()),
    };
    Asked {
        sent,
        took,
        outcome,
    }
}

/// Requests sent at a steady pace; stops sending when finished or dropped.
struct Probe {
    stop: Arc<AtomicBool>,
    asked: Arc<Mutex<Vec<Asked>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn answered(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    /// Stops sending and waits for every request's answer; the requests in the order sent.
    fn finish(mut self) -> Vec<Asked> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let mut all = std::mem::take(&mut *self.asked.lock().unwrap());
        all.sort_by_key(|a| a.sent);
        all
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a probe saw around a fault that started at `fault` and ended at `end`.
struct Report {
    sent: usize,
    right: usize,
    /// (status, count) of the clean errors.
    failed: Vec<(u16, usize)>,
    slowest_failure: Duration,
    slowest_success: Duration,
    /// When the first request answered right after the fault was sent, in seconds after its end.
    first_right_after_end: Option<f64>,
    /// When the last request that was not answered right was sent, in seconds after the fault's
    /// end (negative: before it). Every request sent later was answered right.
    last_failed_after_end: Option<f64>,
}

impl Report {
    /// Says what was measured (`cargo test -- --nocapture` shows it).
    fn print(&self, fault: &str, end: &str) {
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:+.2} s"));
        eprintln!(
            "{fault}: {} requests, {} answered right, clean errors {:?} (slowest {:.2?}); \
             first right answer to a request sent {} after the {end}, every request sent after \
             {} answered right; slowest right answer {:.2?}",
            self.sent,
            self.right,
            self.failed,
            self.slowest_failure,
            secs(self.first_right_after_end),
            secs(self.last_failed_after_end),
            self.slowest_success
        );
    }
}

/// Checks every request a probe made: none answered wrong, none past its deadline; returns
/// what it saw.
fn judge(asked: &[Asked], end: Instant) -> Report {
    let wrong: Vec<_> = asked
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Wrong(_)))
        .collect();
    assert!(wrong.is_empty(), "answered wrong: {wrong:#?}");
    let late: Vec<_> = asked.iter().filter(|a| a.took > DEADLINE + SLACK).collect();
    assert!(
        late.is_empty(),
        "waited past the {DEADLINE:?} deadline: {late:#?}"
    );
    let mut failed = std::collections::BTreeMap::new();
    for a in asked {
        if let Outcome::Failed(s) = a.outcome {
            *failed.entry(s).or_insert(0) += 1;
        }
    }
    let mut failures = asked.iter().filter(|a| a.outcome != Outcome::Right);
    let secs_after_end = |a: &Asked| match a.sent.checked_duration_since(end) {
        Some(d) => d.as_secs_f64(),
        None => -end.duration_since(a.sent).as_secs_f64(),
    };
    Report {
        sent: asked.len(),
        right: asked.iter().filter(|a| a.outcome == Outcome::Right).count(),
        failed: failed.into_iter().collect(),
        slowest_failure: failures.clone().map(|a| a.took).max().unwrap_or_default(),
        slowest_success: asked
            .iter()
            .filter(|a| a.outcome == Outcome::Right)
            .map(|a| a.took)
            .max()
            .unwrap_or_default(),
        first_right_after_end: asked
            .iter()
            .find(|a| a.sent >= end && a.outcome == Outcome::Right)
            .map(secs_after_end),
        last_failed_after_end: failures.next_back().map(secs_after_end),
    }
}

/// Waits until a request sent after `end` (a fault's end) is answered right, then checks that
/// the next 20 are too.
fn wait_for_service(d: &Deployment, probe: &Probe, end: Instant, what: &str) {
    wait_until(what, || {
        probe
            .asked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.sent >= end && a.outcome == Outcome::Right)
    });
    for _ in 0..20 {
        let a = d.ask(next_number());
        assert_eq!(
            a.outcome,
            Outcome::Right,
            "after the service came back: {a:?}"
        );
    }
}

/// Lets the probe show the steady state before a fault: some requests answered, all right.
fn steady(probe: &Probe) {
    wait_until("the probe's first requests were never answered", || {
        probe.answered() >= 10
    });
}

#[test]
fn requests_cross_three_hosts_and_are_answered_right() {
    let Some(mut d) = Deployment::start("steady") else {
        return;
    };
    let probe = d.probe();
    wait_until("the probe's requests were never answered", || {
        probe.answered() >= 100
    });
    let asked = probe.finish();
    let r = judge(&asked, Instant::now());
    assert_eq!(
        r.right, r.sent,
        "in the steady state every request is answered 200: {:?}",
        r.failed
    );
    d.assert_all_alive();
    eprintln!(
        "steady: {} requests through three hosts, all answered right, slowest {:?}",
        r.sent, r.slowest_success
    );
}

/// The stage 2 host is cut off for longer than the deadline while requests run, then joined
/// again: meanwhile requests get a clean 503/504 by their deadline, none hangs; once healed
/// the service comes back by itself, every answer right.
#[test]
fn a_partitioned_host_costs_errors_within_the_deadline_and_service_resumes_when_healed() {
    let Some(mut d) = Deployment::start("partition") else {
        return;
    };
    let probe = d.probe();
    steady(&probe);
    d.net.link(Host::Stage2, false);
    let cut = Instant::now();
    // Setting the scene only: the partition outlasts the deadline of requests sent into it.
    std::thread::sleep(FAULT);
    d.net.link(Host::Stage2, true);
    let healed = Instant::now();
    wait_for_service(
        &d,
        &probe,
        healed,
        "service never resumed after the partition healed",
    );
    let asked = probe.finish();
    let r = judge(&asked, healed);
    let during: Vec<_> = asked
        .iter()
        .filter(|a| a.sent >= cut && a.sent < healed)
        .collect();
    assert!(
        during.iter().any(|a| a.outcome != Outcome::Right),
        "the partition did not show: every request sent during it was answered 200"
    );
    d.assert_all_alive();
    r.print(&format!("the stage 2 host cut off for {FAULT:?}"), "heal");
}

/// Every process of the stage 1 host (its proxy and its worker process) is SIGKILLed while
/// requests run, and started again after longer than the deadline: meanwhile requests get a
/// clean 503/504 by their deadline, none hangs; once restarted the service comes back.
#[test]
fn a_host_whose_processes_all_die_costs_errors_within_the_deadline_and_serves_once_restarted() {
    let Some(mut d) = Deployment::start("host-death") else {
        return;
    };
    let probe = d.probe();
    steady(&probe);
    d.kill_host(Host::Stage1);
    let killed = Instant::now();
    // Setting the scene only: the host stays dead past the deadline of requests sent meanwhile.
    std::thread::sleep(FAULT);
    d.start_host(Host::Stage1);
    let restarted = Instant::now();
    wait_for_service(
        &d,
        &probe,
        restarted,
        "service never resumed after the restart",
    );
    let asked = probe.finish();
    let r = judge(&asked, restarted);
    let during: Vec<_> = asked
        .iter()
        .filter(|a| a.sent >= killed && a.sent < restarted)
        .collect();
    assert!(
        during.iter().any(|a| a.outcome != Outcome::Right),
        "the host's death did not show: every request sent meanwhile was answered 200"
    );
    d.assert_all_alive();
    r.print(
        &format!("the stage 1 host's processes dead for {FAULT:?}"),
        "restart",
    );
}
