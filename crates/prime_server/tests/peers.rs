//! Who comes and goes, over real ipc sockets: workers joining and leaving a proxy (by the
//! protocol: Ready, Disconnect, silence), and the connections of workers to a front and of a
//! front to a proxy (by libzmq's socket monitor), each counted.

use prime_server::shutdown::{OnDrain, Shutdown};
use prime_server::stats::{ServerCounts, StageCounts};
use prime_server::transport::{Context, Kind as SocketKind};
use prime_server::wire::{Header, Kind};
use prime_server::{Endpoint, Heartbeat, Outcome};
use prime_server::{Proxy, ProxyConfig, Server, ServerConfig, Worker, WorkerConfig};
use std::path::Path;
use std::time::Duration;

mod common;
use common::wait_until;

const HEARTBEAT: Heartbeat = Heartbeat {
    interval: Duration::from_millis(50),
    liveness: 3,
};

fn ipc(dir: &Path, name: &str) -> Endpoint {
    Endpoint::ipc(&dir.join(name)).expect("a valid path")
}

/// Waits until the proxy's counters satisfy `cond`.
fn wait_stage(
    what: &str,
    stats: &prime_server::stats::StageStats,
    cond: impl Fn(StageCounts) -> bool,
) {
    wait_until(what, || cond(stats.snapshot()));
}

fn wait_front(
    what: &str,
    stats: &prime_server::stats::ServerStats,
    cond: impl Fn(ServerCounts) -> bool,
) {
    wait_until(what, || cond(stats.snapshot()));
}

#[test]
fn workers_joining_and_leaving_are_counted_by_their_proxy_and_their_connections_by_the_front() {
    let dir = std::env::temp_dir().join(format!(
        "ps-peers-{}-{}",
        std::process::id(),
        prime_server::server::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (up, down) = (ipc(&dir, "up"), ipc(&dir, "down"));
    let (loopback, interrupt) = (ipc(&dir, "lb"), ipc(&dir, "int"));

    // The proxy and the front in one context, as in their own process.
    let ctx = Context::new();
    let mut cfg = ProxyConfig::new(up.clone(), down.clone());
    cfg.heartbeat = HEARTBEAT;
    let proxy = Proxy::bind(&ctx, cfg).unwrap();
    let stage = proxy.stats();
    let shutdown = Shutdown::new();
    let sd = shutdown.clone();
    let proxy_thread = std::thread::spawn(move || proxy.run(sd).unwrap());
    let mut front_cfg = ServerConfig::new(up.clone(), loopback.clone(), interrupt.clone());
    front_cfg.heartbeat = HEARTBEAT;
    let front = Server::start(&ctx, front_cfg, shutdown.clone()).unwrap();
    let fronts = front.stats();
    wait_stage(
        "the front's connection to the proxy was not counted",
        &stage,
        |s| s.upstream_connected == 1,
    );

    // A worker, in a context of its own as in another process, joins, is connected to the
    // front's loopback and interrupt sockets, then drains: a clean leave.
    let worker_ctx = Context::new();
    let mut wcfg = WorkerConfig::new(down.clone(), loopback.clone(), interrupt.clone());
    wcfg.heartbeat = HEARTBEAT;
    wcfg.on_drain = OnDrain::FinishAndExit;
    let worker = Worker::connect(
        &worker_ctx,
        wcfg,
        Box::new(|job, _| Ok(Outcome::Reply(job.frames.concat()))),
    )
    .unwrap();
    let worker_shutdown = Shutdown::new();
    let sd = worker_shutdown.clone();
    let worker_thread = std::thread::spawn(move || worker.run(sd).unwrap());
    wait_stage("the worker did not join", &stage, |s| {
        s.joined == 1 && s.idle == 1
    });
    wait_front(
        "the worker's two connections were not counted",
        &fronts,
        |s| s.peers_connected == 2,
    );
    worker_shutdown.drain();
    wait_stage("the worker did not leave", &stage, |s| s.left == 1);
    worker_thread.join().unwrap();
    drop(worker_ctx);
    wait_front("the worker's connections did not close", &fronts, |s| {
        s.peers_disconnected == 2
    });
    assert_eq!(
        (stage.snapshot().joined, stage.snapshot().expired),
        (1, 0),
        "a clean leave is not an expiry"
    );

    // A worker that dies: says Ready, then is gone without a word.
    let dead_ctx = Context::new();
    let dead = dead_ctx.socket(SocketKind::Dealer).unwrap();
    dead.set_routing_id(b"short-lived").unwrap();
    dead.connect(&down).unwrap();
    dead.send([&Header::new(Kind::Ready).encode()[..]]).unwrap();
    wait_stage("the second worker did not join", &stage, |s| s.joined == 2);
    drop(dead);
    drop(dead_ctx);
    wait_stage("the dead worker was not dropped", &stage, |s| s.left == 2);
    let s = stage.snapshot();
    assert_eq!((s.joined, s.left, s.expired, s.idle), (2, 2, 1, 0));

    shutdown.stop();
    front.join();
    proxy_thread.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
