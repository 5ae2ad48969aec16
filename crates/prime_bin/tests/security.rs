//! CURVE between the daemons: a deployment with `[security]` serves over tcp and ipc, keys are
//! made by `prime_keygen` and guarded by their permissions, and a tcp endpoint bound without
//! keys is loudly reported. (Hostile peers are in `hostile.rs`.)

mod common;
use common::*;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROLES: [&str; 5] = [
    "front",
    "parse-proxy",
    "parse-workers",
    "test-proxy",
    "test-workers",
];

/// A two-stage prime topology with `[security]` over `scheme` (tcp on 127.0.0.1, or ipc).
fn secure_topology(dir: &Path, scheme: &str) -> (PathBuf, u16) {
    let port = free_port();
    let head = "drain_seconds = 2\n[heartbeat]\ninterval_ms = 300\nliveness = 3\n[security]\nkeys = \"keys\"";
    let stages = [
        "proxy_key = \"parse-proxy\"\nworker_key = \"parse-workers\"",
        "proxy_key = \"test-proxy\"\nworker_key = \"test-workers\"",
    ];
    let (path, _) = prime_topology(dir, port, scheme, head, "key = \"front\"", stages, 2);
    (path, port)
}

fn start_stack(config: &Path, logs: &Path) -> (Vec<Proc>, SocketAddr) {
    let c = config.to_str().unwrap();
    let log = |name: &str| Stdio::from(std::fs::File::create(logs.join(name)).unwrap());
    let mut procs = vec![
        Proc::start_logging(
            "prime_proxyd",
            &["--config", c, "--stage", "parse"],
            log("proxy-parse.log"),
        ),
        Proc::start_logging(
            "prime_proxyd",
            &["--config", c, "--stage", "test"],
            log("proxy-test.log"),
        ),
        Proc::start_logging(
            "prime_workerd",
            &["--config", c, "--stage", "parse"],
            log("workers-parse.log"),
        ),
        Proc::start_logging(
            "prime_workerd",
            &["--config", c, "--stage", "test"],
            log("workers-test.log"),
        ),
    ];
    let mut front = Proc::start_logging("prime_httpd", &["--config", c], log("front.log"));
    let addr = front.listening();
    procs.push(front);
    (procs, addr)
}

fn assert_primes(addr: SocketAddr) {
    for (n, prime) in [(32416190071u64, true), (1000, false), (7919, true)] {
        let mut answer = None;
        wait_until("an answer through the CURVE pipeline", || {
            let mut s = connect(addr);
            let got = http(&mut s, &get(&format!("/is_prime?possible_prime={n}")));
            answer = got.clone();
            matches!(got, Some((200, _, _)))
        });
        let (_, _, body) = answer.unwrap();
        assert_eq!(
            body,
            format!(r#"{{"possible_prime":{n},"is_prime":{prime}}}"#)
        );
    }
}

#[test]
fn a_deployment_with_curve_serves_over_tcp_and_ipc() {
    for scheme in ["tcp", "ipc"] {
        let dir = temp_dir(&format!("curve-{scheme}"));
        let out = keygen(&dir, &ROLES);
        assert!(out.status.success(), "{out:?}");
        let (config, _) = secure_topology(&dir, scheme);
        let (procs, addr) = start_stack(&config, &dir);
        assert_primes(addr);
        for p in procs {
            p.stop();
        }
        // No socket was bound in plain text, and nobody was refused.
        for log in std::fs::read_dir(&dir).unwrap() {
            let path = log.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("WITHOUT CURVE"),
                    "{}: {text}",
                    path.display()
                );
                assert!(
                    !text.contains("refused peers"),
                    "{}: {text}",
                    path.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn prime_keygen_writes_the_secret_for_its_owner_only_and_never_overwrites() {
    let dir = temp_dir("keygen");
    let out = keygen(&dir, &["front"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let public = std::fs::read_to_string(dir.join("keys/front.public")).unwrap();
    let key = public.lines().find(|l| !l.starts_with('#')).unwrap();
    assert_eq!(key.len(), 40, "{public}");
    assert!(stdout.contains(key), "prints the public key: {stdout}");
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("keys/front.secret"), 0o600);
    assert_eq!(mode("keys"), 0o700);
    let again = keygen(&dir, &["front"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("keys/front.public")).unwrap(),
        public
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_daemon_refuses_to_start_on_a_secret_key_others_may_read() {
    let dir = temp_dir("exposed-key");
    assert!(keygen(&dir, &ROLES).status.success());
    let (config, _) = secure_topology(&dir, "ipc");
    let secret = dir.join("keys/parse-workers.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(bin("prime_workerd"))
        .args(["--config", config.to_str().unwrap(), "--stage", "parse"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started on an exposed key: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("parse-workers.secret") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // The same file, the owner's only, is accepted: the daemon starts and serves until stopped.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.join("workers.log");
    let p = Proc::start_logging(
        "prime_workerd",
        &["--config", config.to_str().unwrap(), "--stage", "parse"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_until("the workers started", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("workers started"))
    });
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tcp_endpoint_bound_without_keys_is_reported_loudly() {
    let dir = temp_dir("plain-tcp");
    let log = dir.join("proxy.log");
    let up = format!("tcp://127.0.0.1:{}", free_port());
    let down = format!("tcp://127.0.0.1:{}", free_port());
    let p = Proc::start_logging(
        "prime_proxyd",
        &[&up, &down],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_until("the warning", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.matches("BOUND WITHOUT CURVE").count() == 2)
    });
    p.stop();
    // ipc needs no keys on one trusted host: no warning.
    let log = dir.join("proxy-ipc.log");
    let p = Proc::start_logging(
        "prime_proxyd",
        &[
            &format!("ipc://{}/in", dir.display()),
            &format!("ipc://{}/out", dir.display()),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_until("the proxy bound", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("proxy bound"))
    });
    p.stop();
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("WITHOUT CURVE"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_topology_with_security_names_the_role_whose_key_is_missing() {
    let dir = temp_dir("missing-key");
    assert!(keygen(
        &dir,
        &["front", "parse-proxy", "parse-workers", "test-proxy"]
    )
    .status
    .success());
    let (config, _) = secure_topology(&dir, "ipc");
    let out = Command::new(bin("prime_workerd"))
        .args(["--config", config.to_str().unwrap(), "--stage", "test"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stage.test.worker_key") && stderr.contains("test-workers"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A worker (or a front) whose key its proxy did not admit yet (the operator forgot it in the
/// list) is refused; libzmq never tries a refused CURVE connection again, so once the proxy is
/// restarted with the key listed, the refused peer must try again by itself and serve, without
/// a restart.
#[test]
fn a_refused_worker_is_served_once_its_proxy_admits_its_key() {
    refused_then_admitted("workers");
}

#[test]
fn a_refused_front_is_served_once_its_proxy_admits_its_key() {
    refused_then_admitted("front");
}

/// Starts a proxy that admits `other` in place of `refused` (`workers` or `front`), checks that
/// requests fail, restarts the proxy with the right lists and waits for an answer.
fn refused_then_admitted(refused: &str) {
    let dir = temp_dir(&format!("late-admission-{refused}"));
    assert!(keygen(&dir, &["front", "proxy", "workers", "other"])
        .status
        .success());
    let k = |name: &str| dir.join("keys").join(name).to_str().unwrap().to_string();
    let ep = |name: &str| format!("ipc://{}/{name}", dir.display());
    let (up, down, lb, int) = (ep("in"), ep("out"), ep("lb"), ep("int"));
    let proxy = |fixed: bool| {
        let wrong = |role: &'static str| -> &'static str {
            if !fixed && role == refused {
                "other"
            } else {
                role
            }
        };
        Proc::start(
            "prime_proxyd",
            &[
                &up,
                &down,
                "--heartbeat-ms",
                "200",
                "--curve-secret",
                &k("proxy.secret"),
                "--allow-upstream",
                &k(&format!("{}.public", wrong("front"))),
                "--allow-downstream",
                &k(&format!("{}.public", wrong("workers"))),
            ],
        )
    };
    let mut p = proxy(false);
    let w = Proc::start(
        "prime_workerd",
        &[
            &down,
            "-",
            &lb,
            &int,
            "--work",
            "echo",
            "--heartbeat-ms",
            "200",
            "--curve-secret",
            &k("workers.secret"),
            "--proxy-key",
            &k("proxy.public"),
            "--front-key",
            &k("front.public"),
        ],
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut front = Proc::start(
        "prime_httpd",
        &[
            &listen,
            &up,
            &lb,
            &int,
            "--timeout",
            "2",
            "--heartbeat-ms",
            "200",
            "--curve-secret",
            &k("front.secret"),
            "--proxy-key",
            &k("proxy.public"),
            "--allow-worker",
            &k("workers.public"),
        ],
    );
    let addr = front.listening();
    // Refused: no worker, so the request waits at the proxy until its deadline.
    let mut s = connect(addr);
    let (status, _, _) = http(&mut s, &get("/refused")).unwrap();
    assert!(status == 504 || status == 503, "{status}");
    // The operator fixes the list and restarts the proxy; nothing else is restarted.
    p.signal("-KILL");
    p.wait_exit(LIMIT);
    let p = proxy(true);
    wait_until("an answer once the proxy admitted the key", || {
        let mut s = connect(addr);
        matches!(http(&mut s, &get("/admitted")), Some((200, _, _)))
    });
    for proc in [front, w, p] {
        proc.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}
