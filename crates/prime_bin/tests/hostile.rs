//! Hostile peers against a deployment with CURVE on (`[security]`): the real daemons, over tcp
//! on 127.0.0.1 and over ipc, and a pyzmq peer (`tests/hostile_peer.py`) that, while clients
//! are served, tries to take jobs from a stage's proxy, listen to a front's interrupt channel
//! and forge replies on its loopback, with an unknown key, without CURVE, with a listed key that
//! expects another server key, and with another stage's workers' key (on the proxy). It must
//! get nothing, change no answer, and be logged. A control run without `[security]` shows that
//! the same peer does take jobs and forge answers there, so the secure runs cannot pass because
//! the peer is broken. And a key taken off a proxy's list is refused once the proxy restarts.

mod common;
use common::python::python;
use common::*;
use prime_server::wire::{Header, Kind};
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The numbers the clients ask about, with the right answers.
const PRIMES: [(u64, bool); 5] = [
    (32416190071, true),
    (1000, false),
    (999983, true),
    (2, true),
    (1_000_000_007 * 3, false),
];

/// The Z85 text of a public key file.
fn public_key(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join("keys").join(format!("{name}.public"))).unwrap();
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap()
        .trim()
        .to_string()
}

/// The prime demo's topology (parse, test) over `scheme` in `dir`, with `[security]` when
/// `secure` (the test stage's workers hold the keys `test_workers`, a TOML string or list), and
/// its endpoints by name.
fn topology(
    dir: &Path,
    scheme: &str,
    secure: bool,
    test_workers: &str,
) -> (PathBuf, HashMap<&'static str, String>) {
    let keys = |text: String| if secure { text } else { String::new() };
    let head = format!(
        "drain_seconds = 2\n[heartbeat]\ninterval_ms = 500\nliveness = 3\n{}",
        keys("[security]".into())
    );
    let server = format!("timeout_seconds = 20\n{}", keys("key = \"front\"".into()));
    let parse = keys("proxy_key = \"parse-proxy\"\nworker_key = \"parse-workers\"".into());
    let test = keys(format!(
        "proxy_key = \"test-proxy\"\nworker_key = {test_workers}"
    ));
    prime_topology(dir, free_port(), scheme, &head, &server, [&parse, &test], 1)
}

/// A daemon whose log (stderr) goes to `dir/LOG.log`.
fn start_logged(dir: &Path, log: &str, name: &str, args: &[&str]) -> Proc {
    let file = std::fs::File::create(dir.join(format!("{log}.log"))).unwrap();
    Proc::start_logging(name, args, Stdio::from(file))
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// The whole demo from its topology, each daemon logging to a file named after it.
struct Stack {
    parts: Vec<Proc>,
    front: Proc,
    addr: SocketAddr,
}

impl Stack {
    fn start(dir: &Path, cfg: &Path) -> Stack {
        let c = cfg.to_str().unwrap();
        let parts = vec![
            start_logged(
                dir,
                "proxy-parse",
                "prime_proxyd",
                &["--config", c, "--stage", "parse"],
            ),
            start_logged(
                dir,
                "proxy-test",
                "prime_proxyd",
                &["--config", c, "--stage", "test"],
            ),
            start_logged(
                dir,
                "workers-parse",
                "prime_workerd",
                &["--config", c, "--stage", "parse"],
            ),
            start_logged(
                dir,
                "workers-test",
                "prime_workerd",
                &["--config", c, "--stage", "test"],
            ),
        ];
        let mut front = start_logged(dir, "front", "prime_httpd", &["--config", c]);
        let addr = front.listening();
        Stack { parts, front, addr }
    }

    fn stop(self) {
        self.front.stop();
        for p in self.parts {
            p.stop();
        }
    }
}

/// Asks about `PRIMES[k % 5]`: the status and body of the answer.
fn ask(s: &mut std::net::TcpStream, k: usize) -> (u16, String, String) {
    let n = PRIMES[k % PRIMES.len()].0;
    http(s, &get(&format!("/is_prime?possible_prime={n}"))).expect("connection closed")
}

fn right_answer(k: usize) -> String {
    let (n, prime) = PRIMES[k % PRIMES.len()];
    format!("{{\"possible_prime\":{n},\"is_prime\":{prime}}}")
}

/// What the hostile peer reported: `(kind, what)` → count, and its `info` lines by name.
struct Report {
    counts: HashMap<(String, String), u64>,
    lines: HashMap<String, String>,
}

impl Report {
    fn get(&self, kind: &str, what: &str) -> u64 {
        *self
            .counts
            .get(&(kind.to_string(), what.to_string()))
            .unwrap_or_else(|| panic!("no {kind} {what} in the report"))
    }
}

/// Runs the hostile peer against the deployment for `seconds` while a client asks `addr`;
/// returns the peer's report and every answer the client got (its index, status, body).
fn attack(
    dir: &Path,
    eps: &HashMap<&str, String>,
    secure: bool,
    other_role_forges: bool,
    addr: SocketAddr,
    seconds: f64,
) -> (Report, Vec<(usize, u16, String, String)>) {
    let keys = dir.join("keys");
    let key = |name: &str| keys.join(name).display().to_string();
    let mut ready = Header::new(Kind::Ready);
    ready.stage = 2;
    let mut heartbeat = Header::new(Kind::Heartbeat);
    heartbeat.stage = 2;
    let hex = |h: &Header| {
        h.encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let spec = format!(
        r#"{{"secure": {secure}, "seconds": {seconds}, "stage": 2, "request_ids": 300,
            "other_role_forges": {other_role_forges},
            "ready": "{}", "heartbeat": "{}",
            "downstream": "{}", "interrupt": "{}", "loopback": "{}",
            "listed_secret": "{}", "other_role_secret": "{}",
            "proxy_public": "{}", "front_public": "{}"}}"#,
        hex(&ready),
        hex(&heartbeat),
        eps["test_out"],
        eps["interrupt"],
        eps["loopback"],
        key("test-workers.secret"),
        key("parse-workers.secret"),
        key("test-proxy.public"),
        key("front.public"),
    );
    let spec_path = dir.join("hostile.json");
    std::fs::write(&spec_path, spec).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hostile_peer.py");
    let mut peer = Proc {
        child: Command::new(python())
            .arg(script)
            .arg(&spec_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        name: "hostile peer".into(),
    };
    let mut answers = Vec::new();
    let mut s = connect(addr);
    let t = Instant::now();
    while peer.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < LIMIT, "the hostile peer did not finish");
        let k = answers.len();
        let (status, head, body) = ask(&mut s, k);
        answers.push((k, status, head, body));
    }
    let out = output_of(&mut peer.child);
    assert!(out.0.success(), "hostile peer: {}\n{}", out.1, out.2);
    let mut report = Report {
        counts: HashMap::new(),
        lines: HashMap::new(),
    };
    for line in out.1.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["info", what, value] => {
                report.lines.insert(what.into(), value.into());
            }
            [kind, what, n] if n.parse::<u64>().is_ok() => {
                report
                    .counts
                    .insert((kind.into(), what.into()), n.parse().unwrap());
            }
            _ => panic!("hostile peer said {line:?}"),
        }
    }
    (report, answers)
}

/// Waits for `child`'s exit and reads what it wrote (little: no pipe fills meanwhile).
fn output_of(child: &mut std::process::Child) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

const BAD_KINDS: [&str; 3] = ["unknown-key", "no-curve", "wrong-server-key"];

/// The attack on a deployment with `[security]` over `scheme`; the key of another stage's
/// workers forges replies too when `other_role_forges`.
fn hostile_peers_get_nothing(scheme: &str, other_role_forges: bool) {
    let dir = temp_dir(&format!("hostile-{scheme}"));
    keygen_ok(
        &dir,
        &[
            "front",
            "parse-proxy",
            "parse-workers",
            "test-proxy",
            "test-workers",
        ],
    );
    let (cfg, eps) = topology(&dir, scheme, true, "\"test-workers\"");
    let stack = Stack::start(&dir, &cfg);
    let mut s = connect(stack.addr);
    assert_eq!(
        ask(&mut s, 0).2,
        right_answer(0),
        "served before the attack"
    );

    let (report, answers) = attack(&dir, &eps, true, other_role_forges, stack.addr, 4.0);

    // Every client answer is right, and there were some while the peer tried.
    assert!(answers.len() >= 5, "only {} answers", answers.len());
    for (k, status, head, body) in &answers {
        assert_eq!((*status, body), (200, &right_answer(*k)), "{head}");
    }
    // The spy (a listed key) learnt the server's id, so the forgers had a target.
    assert_ne!(report.lines["spy_server_id"], "none");
    for kind in BAD_KINDS {
        for what in [
            "handshakes",
            "from_proxy",
            "jobs",
            "interrupt_channel",
            "forged_sent",
        ] {
            assert_eq!(report.get(kind, what), 0, "{kind}: {what}");
        }
        assert!(
            report.get(kind, "forged_unroutable") > 0,
            "{kind} forged nothing"
        );
    }
    // Another stage's workers' key: the fronts admit it (any stage may answer), this stage's
    // proxy does not.
    for what in ["from_proxy", "jobs"] {
        assert_eq!(
            report.get("other-role-key", what),
            0,
            "other-role-key: {what}"
        );
    }
    // Refusals are logged, the keys by name, the others as failed handshakes: one line per
    // refused peer at once (then at most one per peer every 10 s), so the proxy names both keys
    // it refused.
    let unknown = &report.lines["unknown_key_public"];
    let other_role = &report.lines["other_role_key_public"];
    wait_until("the front logs the unknown key", || {
        let text = log(&dir, "front");
        text.contains("refused peers") && text.contains(unknown.as_str())
    });
    wait_until("the proxy logs both refused keys", || {
        let text = log(&dir, "proxy-test");
        text.contains("refused peers")
            && text.contains(unknown.as_str())
            && text.contains(other_role.as_str())
    });
    for daemon in ["proxy-test", "front"] {
        wait_until(&format!("{daemon} logs a failed handshake"), || {
            log(&dir, daemon).contains("the handshake failed")
        });
    }
    if std::env::var_os("SHOW_REFUSALS").is_some() {
        for daemon in ["proxy-test", "front"] {
            eprintln!("{daemon}:\n{}", log(&dir, daemon));
        }
    }
    stack.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hostile_peers_get_no_job_no_interrupt_and_forge_no_answer_over_tcp() {
    hostile_peers_get_nothing("tcp", false);
}

#[test]
fn hostile_peers_get_no_job_no_interrupt_and_forge_no_answer_over_ipc() {
    hostile_peers_get_nothing("ipc", false);
}

/// A worker key of stage 1 is admitted on the fronts' loopbacks (any stage may answer), so with
/// a server's id (its heartbeats are heard by every admitted worker) it can answer requests it
/// was never handed by guessing their ids. DESIGN.md §3 rule 9 says a reply is accepted only from
/// a peer handed that job: the reply token of each job closes this (its forgeries are counted
/// `forged` and dropped).
#[test]
fn a_listed_worker_key_of_another_stage_forges_no_answer() {
    hostile_peers_get_nothing("ipc", true);
}

/// The control: without `[security]` the same peer, without CURVE, takes jobs, hears the
/// interrupt channel and changes clients' answers.
#[test]
fn without_curve_the_hostile_peer_takes_jobs_and_forges_answers() {
    let dir = temp_dir("hostile-control");
    let (cfg, eps) = topology(&dir, "ipc", false, "");
    let stack = Stack::start(&dir, &cfg);
    let mut s = connect(stack.addr);
    assert_eq!(ask(&mut s, 0).2, right_answer(0));

    let (report, answers) = attack(&dir, &eps, false, false, stack.addr, 4.0);

    assert!(report.get("no-curve", "jobs") > 0, "took no job");
    assert!(
        report.get("no-curve", "interrupt_channel") > 0,
        "heard nothing"
    );
    assert!(report.get("no-curve", "forged_sent") > 0, "forged nothing");
    let forged = answers
        .iter()
        .filter(|(_, _, _, body)| body.contains("forged"))
        .count();
    assert!(forged > 0, "no answer was forged: {answers:?}");
    stack.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// A key rotation's last step: the old worker key taken off the proxy's list. A worker still
/// holding it (the Python worker) served before the proxy's restart; after it, it is refused,
/// logged, and every job goes to the worker with the new key.
#[test]
fn a_worker_key_removed_from_the_proxys_list_is_refused_after_its_restart() {
    let dir = temp_dir("hostile-rotation");
    keygen_ok(
        &dir,
        &[
            "front",
            "parse-proxy",
            "parse-workers",
            "test-proxy",
            "old-workers",
            "new-workers",
        ],
    );
    // The fronts admit both keys of the test stage; its workers in the topology hold the first.
    let (cfg, eps) = topology(&dir, "tcp", true, r#"["old-workers", "new-workers"]"#);
    let c = cfg.to_str().unwrap();
    let key = |name: &str| dir.join("keys").join(name).display().to_string();
    let test_proxy = |allowed: &[&str], log: &str| {
        let mut args = vec![
            "--upstream".to_string(),
            eps["test_in"].clone(),
            "--downstream".into(),
            eps["test_out"].clone(),
            "--heartbeat-ms".into(),
            "500".into(),
            "--drain-seconds".into(),
            "2".into(),
            "--curve-secret".into(),
            key("test-proxy.secret"),
            "--allow-upstream".into(),
            key("parse-workers.public"),
        ];
        for k in allowed {
            args.extend(["--allow-downstream".into(), key(&format!("{k}.public"))]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start_logged(&dir, log, "prime_proxyd", &args)
    };
    let parse_proxy = start_logged(
        &dir,
        "proxy-parse",
        "prime_proxyd",
        &["--config", c, "--stage", "parse"],
    );
    let proxy = test_proxy(&["old-workers", "new-workers"], "proxy-test-1");
    let parse_workers = start_logged(
        &dir,
        "workers-parse",
        "prime_workerd",
        &["--config", c, "--stage", "parse"],
    );
    // The new key's worker: prime_workerd with key flags.
    let new_worker = start_logged(
        &dir,
        "workers-new",
        "prime_workerd",
        &[
            &eps["test_out"],
            "-",
            &eps["loopback"],
            &eps["interrupt"],
            "--work",
            "prime_test",
            "--workers",
            "1",
            "--stage-index",
            "2",
            "--heartbeat-ms",
            "500",
            "--curve-secret",
            &key("new-workers.secret"),
            "--proxy-key",
            &key("test-proxy.public"),
            "--front-key",
            &key("front.public"),
        ],
    );
    // The old key's worker: the Python worker, keys from the topology (the first listed).
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/prime_worker.py"
    );
    let mut old_worker = Proc {
        child: Command::new(python())
            .args([script, "--config", c, "--stage", "test"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        name: "python prime worker".into(),
    };
    let line = std::io::BufReader::new(old_worker.child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(line.contains("serving stage test"), "{line}");
    let mut front = start_logged(&dir, "front", "prime_httpd", &["--config", c]);
    let addr = front.listening();

    // Both keys serve: answers come from the Python worker and from the Rust one.
    let mut s = connect(addr);
    let (mut python_served, mut rust_served, mut k) = (0, 0, 0);
    wait_until("both workers serve", || {
        let (status, head, body) = ask(&mut s, k);
        assert_eq!((status, &body), (200, &right_answer(k)), "{head}");
        k += 1;
        if head.contains("x-worker: python") {
            python_served += 1;
        } else {
            rust_served += 1;
        }
        python_served > 0 && rust_served > 0
    });

    // The proxy restarted with the old key off its list.
    proxy.stop();
    let proxy = test_proxy(&["new-workers"], "proxy-test-2");
    let old = public_key(&dir, "old-workers");
    wait_until("the restarted proxy logs the old key's refusal", || {
        let text = log(&dir, "proxy-test-2");
        text.contains("refused peers") && text.contains(old.as_str())
    });
    // Service comes back (requests the killed proxy held may fail meanwhile), then every job
    // goes to the new key's worker.
    wait_until("served again", || {
        let mut s = connect(addr);
        ask(&mut s, 0).0 == 200
    });
    for k in 0..30 {
        let (status, head, body) = ask(&mut s, k);
        assert_eq!((status, &body), (200, &right_answer(k)), "{head}");
        assert!(
            !head.contains("x-worker: python"),
            "the old key served: {head}"
        );
    }
    old_worker.signal("-TERM");
    assert!(old_worker.wait_exit(LIMIT).success());
    front.stop();
    new_worker.stop();
    parse_workers.stop();
    proxy.stop();
    parse_proxy.stop();
    let _ = std::fs::remove_dir_all(dir);
}
