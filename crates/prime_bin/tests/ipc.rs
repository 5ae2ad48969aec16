//! ipc endpoints between real processes. libzmq unlinks whatever file is at an ipc path when it
//! binds there, live socket included, so a second daemon started for a path a running one
//! listens on used to take the path over and leave the deployment half-connected; it must be
//! refused instead, while a socket file left by a crashed run must not block a restart. And the
//! directory of a socket file is created when missing.

mod common;
use common::*;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

/// Proxy, worker and front of `cfg`'s echo stage.
fn echo_stack(cfg: &Path) -> (Vec<Proc>, SocketAddr) {
    let c = cfg.to_str().unwrap();
    let proxy = Proc::start("prime_proxyd", &["--config", c, "--stage", "echo"]);
    let worker = Proc::start("prime_workerd", &["--config", c, "--stage", "echo"]);
    let mut front = Proc::start("prime_httpd", &["--config", c]);
    let addr = front.listening();
    (vec![front, proxy, worker], addr)
}

fn stop_all(procs: Vec<Proc>, dir: &Path) {
    for p in procs {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_duplicate_proxy_is_refused_and_the_running_deployment_keeps_serving() {
    let dir = temp_dir("dup-proxy");
    let cfg = echo_topology_in(&dir, &dir, 1, 60, "");
    let (procs, addr) = echo_stack(&cfg);
    assert_echoes(addr, 3, "before");

    let mut dup = Proc::start_logging(
        "prime_proxyd",
        &["--config", cfg.to_str().unwrap(), "--stage", "echo"],
        Stdio::piped(),
    );
    let status = dup.wait_exit(LIMIT);
    let mut stderr = String::new();
    dup.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "the duplicate exited with {status:?}");
    let upstream = format!("ipc://{}/in", dir.display());
    assert!(
        stderr.contains("already in use") && stderr.contains(&upstream),
        "the duplicate's error should name {upstream} and say it is already in use: {stderr}"
    );

    // The original proxy still owns its socket files: new connections reach it.
    assert_echoes(addr, 5, "after");
    stop_all(procs, &dir);
}

#[test]
fn daemons_create_the_missing_directory_of_their_ipc_endpoints() {
    let dir = temp_dir("ipc-mkdir");
    let ipc_dir = dir.join("run/prime_server");
    assert!(!ipc_dir.exists());
    let cfg = echo_topology_in(&dir, &ipc_dir, 1, 60, "");
    let (procs, addr) = echo_stack(&cfg);
    assert_echoes(addr, 3, "fresh");
    stop_all(procs, &dir);
}
