//! Drain and shutdown as load balancers need them, with real daemon processes: after SIGTERM a
//! front keeps accepting and serving for the drain while its health check answers 503, then
//! stops accepting, gives what is in flight the shutdown time, answers the rest 503 and exits
//! 0; an idle daemon does not wait out its drain; a front whose pipeline is gone refuses at
//! once; every process exits promptly.

mod common;
use common::exposition::value;
use common::*;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A fresh connection's answer to one request (`None`: the connection was refused or closed).
fn ask(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(LIMIT)).unwrap();
    http(&mut s, &get(path))
}

fn echod(args: &[&str]) -> (Proc, SocketAddr) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec![listen.as_str()];
    all.extend_from_slice(args);
    let mut p = Proc::start("prime_echod", &all);
    let addr = p.listening();
    (p, addr)
}

#[test]
fn sigterm_serves_new_connections_through_the_drain_then_finishes_what_is_in_flight() {
    let metrics = format!("127.0.0.1:{}", free_port());
    // An 8 s drain (long enough for the checks below on a loaded machine), then 60 s at most
    // for what is in flight.
    let (mut echod, addr) = echod(&[
        "2",
        "8,60",
        "--health-path",
        "/health",
        "--metrics-listen",
        &metrics,
    ]);
    assert_eq!(ask(addr, "/health").unwrap().0, 200);
    // In flight across the end of the drain: it takes 12 s.
    let mut slow = connect(addr);
    use std::io::Write;
    slow.write_all(get("/slow?sleep=12000").as_bytes()).unwrap();
    // Open, having sent nothing yet: keeps the daemon busy through the drain.
    let mut waiting = connect(addr);
    wait_until("the connections were not accepted", || {
        value(
            &metrics,
            "prime_server_front_connections",
            &[("front", "front")],
        ) == 2.0
    });
    let signalled = Instant::now();
    echod.signal("-TERM");
    // Draining: new connections are accepted and served; health says 503 on them.
    wait_until("the health check never said 503", || {
        match ask(addr, "/health") {
            Some((200, _, _)) => false,
            Some((503, head, _)) => {
                assert!(head.contains("connection: close"), "{head}");
                true
            }
            other => panic!("health during the drain: {other:?}"),
        }
    });
    let (status, head, body) = ask(addr, "/during-the-drain").expect("refused during the drain");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "the checks of the drain ran past it ({:?}): the machine is too slow for this test",
        signalled.elapsed()
    );
    // Then it stops accepting...
    wait_until("still accepting after the drain", || {
        TcpStream::connect(addr).is_err()
    });
    // ...refuses what arrives on a connection still open...
    let (status, _, body) = http(&mut waiting, &get("/after-the-drain")).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "the server is shutting down\n")
    );
    assert_eq!(
        value(
            &metrics,
            "prime_server_front_draining_refused_total",
            &[("front", "front")]
        ),
        1.0
    );
    // ...and finishes what was in flight, then exits 0 at once (nothing is left).
    let (status, _, body) = read_answer(&mut slow).expect("the request in flight was dropped");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("GET /slow?sleep=12000 "), "{body}");
    drop((slow, waiting));
    let answered = Instant::now();
    assert!(echod.wait_exit(LIMIT).success());
    // Well before the 60 s of shutdown time: it did not wait them out.
    assert!(
        answered.elapsed() < Duration::from_secs(20),
        "{:?}",
        answered.elapsed()
    );
}

#[test]
fn what_the_shutdown_time_cannot_finish_is_answered_503_and_the_cpp_drain_form_works() {
    // `1,1`: the C++ DRAIN,SHUTDOWN form.
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut echod, addr) = echod(&["1", "1,1", "--metrics-listen", &metrics]);
    let mut s = connect(addr);
    use std::io::Write;
    s.write_all(get("/forever?sleep=600000").as_bytes())
        .unwrap();
    // In flight before the signal (a connection not accepted yet would find the daemon idle).
    wait_until("the request never reached the server", || {
        value(
            &metrics,
            "prime_server_front_in_flight",
            &[("front", "front")],
        ) == 1.0
    });
    let t = Instant::now();
    echod.signal("-TERM");
    let (status, _, body) = read_answer(&mut s).expect("no answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "before drain + shutdown: {:?}",
        t.elapsed()
    );
    assert!(echod.wait_exit(LIMIT).success());
}

#[test]
fn ctrl_c_on_an_idle_daemon_does_not_wait_out_its_drain() {
    // The default drain (28 s): an idle daemon ends at once instead.
    let (mut echod, addr) = echod(&[]);
    assert_eq!(ask(addr, "/once").unwrap().0, 200);
    let t = Instant::now();
    echod.signal("-INT");
    assert!(echod.wait_exit(LIMIT).success());
    assert!(
        t.elapsed() < Duration::from_secs(14),
        "waited {:?}: half the drain or more",
        t.elapsed()
    );
}

/// The echo stage as separate processes over ipc with the default heartbeats, and `drain` in the
/// file; the front also has a health path.
fn echo_processes(dir: &std::path::Path, file_drain: &str) -> (std::path::PathBuf, Vec<Proc>) {
    let path = echo_topology_in(dir, dir, 1, 60, "health_path = \"/health\"");
    let text = std::fs::read_to_string(&path).unwrap();
    // Default heartbeats (2.5 s × 3): a worker left waiting for its proxy would wait 7.5 s.
    let text = text.replace(
        "drain_seconds = 2\n[heartbeat]\ninterval_ms = 200\nliveness = 3\n",
        file_drain,
    );
    std::fs::write(&path, text).unwrap();
    let c = path.to_str().unwrap();
    let parts = vec![proxy(c), worker(c)];
    (path, parts)
}

#[test]
fn sigterm_to_every_process_at_once_refuses_at_once_and_every_process_exits_promptly() {
    let dir = temp_dir("drain-all");
    let (path, mut parts) = echo_processes(&dir, "drain_seconds = 20\n");
    let (mut front, addr) = front(path.to_str().unwrap(), "s0");
    assert_echoes(addr, 3, "before");
    // Keeps the front busy (draining) until the test lets it go.
    let held = connect(addr);
    let t = Instant::now();
    for p in parts.iter().chain([&front]) {
        p.signal("-TERM");
    }
    for p in &mut parts {
        assert!(p.wait_exit(LIMIT).success(), "{}", p.name);
    }
    // Before the heartbeat expiry (7.5 s) a worker left without its proxy's word would wait.
    let backends = t.elapsed();
    assert!(
        backends < Duration::from_secs(5),
        "proxy and worker took {backends:?}"
    );
    // The front drains (20 s): still accepting, but with no pipeline left it refuses at once
    // rather than holding requests until its drain is over.
    let mut refused = None;
    wait_until("the front never refused for want of a pipeline", || {
        let asked = Instant::now();
        let (status, _, body) = ask(addr, "/after").expect("not accepted during the drain");
        refused = Some((asked.elapsed(), body.clone()));
        status == 503
    });
    let (took, body) = refused.unwrap();
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert!(body.contains("no proxy or worker left"), "{body}");
    let health = ask(addr, "/health").unwrap();
    assert_eq!(health.0, 503);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "checks ran late: {:?}",
        t.elapsed()
    );
    let metrics = ask(addr, "/metrics").unwrap().2;
    assert!(
        metrics.contains("prime_server_front_draining_refused_total{front=\"s0\"} 1"),
        "{metrics}"
    );
    // Nothing connected, nothing in flight: the front ends its drain.
    drop(held);
    let t = Instant::now();
    assert!(front.wait_exit(LIMIT).success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn drain_flags_override_the_topology_file() {
    let dir = temp_dir("drain-flags");
    // The file says 60 s of drain; the command line says 1 (then 1 s of shutdown).
    let (path, parts) = echo_processes(&dir, "drain_seconds = 60\nshutdown_seconds = 60\n");
    let c = path.to_str().unwrap();
    let mut front = Proc::start(
        "prime_httpd",
        &[
            "--config",
            c,
            "--drain-seconds",
            "1",
            "--shutdown-seconds",
            "1",
        ],
    );
    let addr = front.listening();
    assert_echoes(addr, 1, "flags");
    // An open connection keeps the front from ending its drain early: only the flags' times
    // can end it before the file's minute.
    let _held = connect(addr);
    let t = Instant::now();
    front.signal("-TERM");
    assert!(front.wait_exit(LIMIT).success());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    for p in parts {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}
