//! What the front-server tests share: a pipeline with a client protocol served on 127.0.0.1:0,
//! stopped when the test ends, and small waiting helpers.
#![allow(dead_code)]

use prime_server::pipeline::Running;
use prime_server::shutdown::Shutdown;
use prime_server::Server;
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A running pipeline with a front listening on `addr`.
pub struct Front {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    /// Serves `running` with `serve` (a client protocol's serve function) on a runtime thread.
    pub fn start<S, Fut>(running: Running, serve: S) -> Front
    where
        S: FnOnce(tokio::net::TcpListener, Server, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = running.server.clone();
        let shutdown = running.shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = prime_server::protocol::bind_listener("127.0.0.1:0").unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, server, shutdown).await;
            });
        });
        Front {
            running: Some(running),
            addr: rx.recv().unwrap(),
            thread: Some(thread),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Jobs taken in by stage 1's workers.
    pub fn jobs(&self) -> u64 {
        self.running().worker_stats[0]
            .iter()
            .map(|w| w.jobs.load(Ordering::Relaxed))
            .sum()
    }

    /// Work functions of stage 1 that failed or were interrupted.
    pub fn failed(&self) -> u64 {
        self.running().worker_stats[0]
            .iter()
            .map(|w| w.failed.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.stop();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            r.join();
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Waits until `cond` holds, failing with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
