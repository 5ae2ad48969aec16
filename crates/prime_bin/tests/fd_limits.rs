//! Out of file descriptors (issue 10, point 6), with real processes over ipc: a front started
//! with a low open-file limit keeps descriptors for zmq, refuses client connections beyond its
//! cap with a 503, keeps accepting workers and serving, and logs fd pressure once instead of
//! every 10 ms.

mod common;
use common::*;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The front's open-file limit, soft and hard.
const NOFILE: u64 = 256;
/// Idle client connections opened against it: more than it has descriptors.
const CLIENTS: usize = 300;

/// Idle connections are not closed by the header timeout while a test runs.
const IDLE_KEPT: &str = "header_timeout_seconds = 600";

/// Starts a worker process and waits until the front has accepted its two connections (loopback
/// and interrupt); fails at once if the front dies meanwhile.
fn join_worker(cfg: &str, front: &mut Proc) -> Proc {
    let pid = front.child.id();
    let before = open_fds(pid);
    let w = Proc::start("prime_workerd", &["--config", cfg, "--stage", "echo"]);
    wait_until("the front never accepted the worker's connections", || {
        assert_alive(front);
        open_fds(pid) >= before + 2
    });
    w
}

/// The descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Fails the test at once if the front died (libzmq aborts the process when it cannot accept a
/// connection for want of descriptors).
fn assert_alive(front: &mut Proc) {
    if let Some(status) = front.child.try_wait().unwrap() {
        panic!("the front died: {status:?}");
    }
}

/// Idle client connections, watched without blocking: a connection is refused once the front
/// closed it (what it sent before is kept).
struct Idle {
    conns: Vec<Option<TcpStream>>,
    got: Vec<Vec<u8>>,
    closed: Vec<bool>,
}

impl Idle {
    fn open(addr: SocketAddr, n: usize) -> Idle {
        let conns = (0..n)
            .map(|_| {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nonblocking(true).unwrap();
                Some(s)
            })
            .collect();
        Idle {
            conns,
            got: vec![Vec::new(); n],
            closed: vec![false; n],
        }
    }

    /// Reads what has arrived; returns how many connections the front closed so far.
    fn poll(&mut self) -> usize {
        let mut buf = [0u8; 1024];
        for (i, c) in self.conns.iter_mut().enumerate() {
            let Some(s) = c else { continue };
            while !self.closed[i] {
                match s.read(&mut buf) {
                    Ok(0) => self.closed[i] = true,
                    Ok(n) => self.got[i].extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => self.closed[i] = true,
                }
            }
        }
        self.refused()
    }

    fn refused(&self) -> usize {
        self.closed.iter().filter(|&&c| c).count()
    }

    /// Closes `n` connections the front still holds.
    fn close_held(&mut self, n: usize) {
        let held = (0..self.conns.len()).filter(|&i| !self.closed[i] && self.conns[i].is_some());
        for i in held.take(n).collect::<Vec<_>>() {
            self.conns[i] = None;
        }
    }

    /// The connections the front holds (open, nothing received), not counting those closed here.
    fn held(&self) -> usize {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].is_some() && !self.closed[i] && self.got[i].is_empty())
            .count()
    }

    /// What each refused connection received before it was closed.
    fn refusals(&self) -> Vec<String> {
        (0..self.conns.len())
            .filter(|&i| self.closed[i])
            .map(|i| String::from_utf8_lossy(&self.got[i]).into_owned())
            .collect()
    }
}

/// A fresh connection's answer to one request, or `None` when the front refused the connection
/// (503, or closed before answering).
fn fresh_request(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut s = connect(addr);
    match http(&mut s, &get(path)) {
        Some((503, _, body)) if body.starts_with("too many connections") => None,
        other => other,
    }
}

#[test]
fn out_of_descriptors_the_front_refuses_the_excess_and_a_new_worker_still_connects() {
    let dir = temp_dir("fd-front");
    let cfg = echo_topology_in(&dir, &dir, 1, 60, IDLE_KEPT);
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let mut f = Proc::start_with_nofile("prime_httpd", &["--config", c], Stdio::null(), NOFILE);
    let addr = f.listening();
    let pid = f.child.id();
    let a = join_worker(c, &mut f);
    let cap = prime_server::fd_limit::max_connections_for(NOFILE);
    assert!(cap < CLIENTS, "the cap {cap} would hold every client");

    // The front takes what it can: it holds `cap` connections and refuses the rest, or (with no
    // cap) accepts until its descriptors run out.
    let mut idle = Idle::open(addr, CLIENTS);
    wait_until(
        "the front neither refused the excess nor ran out of descriptors",
        || {
            assert_alive(&mut f);
            idle.poll() >= CLIENTS - cap || open_fds(pid) as u64 >= NOFILE - 2
        },
    );

    // One more worker process: the front's zmq must accept its two connections (loopback and
    // interrupt) with the descriptors it kept.
    let b = join_worker(c, &mut f);
    let b_pid = b.child.id();

    // Some idle clients leave; their slots free, and a fresh connection is served by the
    // pipeline, up to the new worker (the proxy hands jobs to the worker idle longest, so the
    // two take turns).
    idle.close_held(10);
    let mut k = 0;
    wait_until(
        "the new worker never answered on a fresh connection",
        || {
            assert_alive(&mut f);
            k += 1;
            let Some((status, head, body)) = fresh_request(addr, &format!("/fresh-{k}")) else {
                return false;
            };
            assert_eq!(status, 200, "{head}\n{body}");
            assert!(body.starts_with(&format!("GET /fresh-{k} ")), "{body}");
            head.contains(&format!("x-worker: {b_pid}/"))
        },
    );

    // Exactly the excess was refused, each with a 503 that says to come back and closes; the
    // connections within the cap are still open.
    idle.poll();
    assert_eq!(idle.refused(), CLIENTS - cap);
    for r in idle.refusals() {
        assert!(r.starts_with("HTTP/1.1 503 "), "{r:?}");
        assert!(r.contains("retry-after: 1\r\n"), "{r:?}");
        assert!(r.contains("connection: close\r\n"), "{r:?}");
    }
    assert_eq!(idle.held(), cap - 10);

    assert_alive(&mut f);
    drop(idle);
    f.stop();
    a.stop();
    b.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn accept_failing_for_want_of_descriptors_is_logged_once_and_service_resumes() {
    let dir = temp_dir("fd-accept");
    // A cap set by hand beyond what the descriptors allow: accept itself runs out.
    let cfg = echo_topology_in(
        &dir,
        &dir,
        1,
        60,
        &format!("{IDLE_KEPT}\nmax_connections = 100000"),
    );
    let c = cfg.to_str().unwrap();
    let p = proxy(c);
    let log_path = dir.join("front.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut f = Proc::start_with_nofile("prime_httpd", &["--config", c], log.into(), NOFILE);
    let addr = f.listening();
    // Connected before the descriptors run out: with none left, libzmq would abort the front
    // when the worker connects (the reason for the reserve, which this cap leaves no room for).
    let a = join_worker(c, &mut f);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines = |what: &str| read_log().lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("max_connections leaves zmq less than the reserve"), 1);

    let mut idle = Idle::open(addr, CLIENTS);
    let t = Instant::now();
    wait_until("accept never ran out of descriptors", || {
        assert_alive(&mut f);
        lines("cannot accept connections") > 0
    });
    // Stay out of descriptors for a while (a loop that logs every failure writes a hundred lines
    // a second here; nothing depends on this pause's length).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        idle.poll(),
        0,
        "no connection is refused: they wait in the backlog"
    );

    // Clients leave: the front accepts again, the backlog and then a fresh connection.
    idle.close_held(100);
    wait_until("no answer on a fresh connection", || {
        assert_alive(&mut f);
        matches!(fresh_request(addr, "/after"), Some((200, _, _)))
    });
    wait_until("the front never said it accepts again", || {
        lines("accepting connections again") == 1
    });
    let pressure = lines("cannot accept connections");
    let allowed = 1 + (t.elapsed().as_secs() / 10) as usize;
    assert!(
        pressure <= allowed,
        "{pressure} lines about fd pressure in {:?}:\n{}",
        t.elapsed(),
        read_log()
    );
    assert_eq!(
        idle.held(),
        CLIENTS - 100,
        "a connection in the backlog was dropped"
    );

    drop(idle);
    f.stop();
    a.stop();
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}
