//! Who comes and goes, in the daemons' logs: a worker process joining a `prime_proxyd` and
//! leaving it (cleanly on SIGTERM, unannounced on SIGKILL), and its connections to a
//! `prime_httpd`, each a line at info (a warning for a worker that died) with the worker's id
//! where the daemon knows it and where it came from.

mod common;
use common::*;
use std::path::Path;
use std::process::Stdio;

/// The lines of the log at `path` that hold every one of `words`.
fn lines_with(path: &Path, words: &[&str]) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Waits for a line of the log at `path` holding every one of `words`, and returns it.
fn wait_line(path: &Path, words: &[&str]) -> String {
    let mut found = None;
    wait_until(
        &format!("no line with {words:?} in {}", path.display()),
        || {
            found = lines_with(path, words).into_iter().next();
            found.is_some()
        },
    );
    found.unwrap()
}

#[test]
fn proxies_log_workers_joining_and_leaving_and_fronts_log_their_connections() {
    // The daemons log at info by default; make sure nothing in the environment says otherwise.
    std::env::set_var("RUST_LOG", "info");
    let dir = temp_dir("peers");
    let cfg = echo_topology(&dir, 1, 60);
    let c = cfg.to_str().unwrap();
    let log = |name: &str| {
        let path = dir.join(name);
        (Stdio::from(std::fs::File::create(&path).unwrap()), path)
    };
    let (out, proxy_log) = log("proxy.log");
    let _proxy = Proc::start_logging("prime_proxyd", &["--config", c, "--stage", "echo"], out);
    let (out, front_log) = log("front.log");
    let mut front = Proc::start_logging("prime_httpd", &["--config", c, "--server", "s0"], out);
    let addr = front.listening();

    // A worker process joins: the proxy names it and its process; the front sees its
    // connections (loopback and interrupt) come from that process.
    let (out, _) = log("worker1.log");
    let worker = Proc::start_logging("prime_workerd", &["--config", c, "--stage", "echo"], out);
    let pid = worker.child.id();
    let id = format!("worker=w-{pid}-");
    let peer = format!("peer=pid:{pid}");
    let joined = wait_line(&proxy_log, &["worker joined", &id, &peer]);
    assert!(joined.contains(" INFO "), "{joined}");
    assert!(joined.contains("endpoint=ipc://"), "{joined}");
    for socket in ["socket=\"loopback\"", "socket=\"interrupt\""] {
        let line = wait_line(&front_log, &["peer connected", socket, &peer]);
        assert!(
            line.contains(" INFO ") && line.contains("endpoint=ipc://"),
            "{line}"
        );
    }
    assert_echoes(addr, 3, "peers");

    // SIGTERM: it says Disconnect, a clean leave.
    worker.stop();
    let left = wait_line(&proxy_log, &["worker left", &id, "reason=\"disconnect\""]);
    assert!(left.contains(" INFO ") && left.contains(&peer), "{left}");
    wait_line(
        &front_log,
        &["peer disconnected", "socket=\"loopback\"", &peer],
    );

    // SIGKILL: no word; the proxy finds it gone (a heartbeat finds no peer, or silence).
    let (out, _) = log("worker2.log");
    let worker = Proc::start_logging("prime_workerd", &["--config", c, "--stage", "echo"], out);
    let pid = worker.child.id();
    let id = format!("worker=w-{pid}-");
    wait_line(&proxy_log, &["worker joined", &id]);
    worker.signal("-KILL");
    let left = wait_line(&proxy_log, &["worker left", &id]);
    assert!(
        left.contains(" WARN ")
            && (left.contains("reason=\"unreachable\"") || left.contains("reason=\"silent\"")),
        "{left}"
    );
    assert_eq!(lines_with(&proxy_log, &["worker joined"]).len(), 2);
    assert_eq!(lines_with(&proxy_log, &["worker left"]).len(), 2);
    front.stop();
    let _ = std::fs::remove_dir_all(dir);
}
