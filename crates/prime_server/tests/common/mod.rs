//! What the front-server and pipeline tests share: a pipeline with a client protocol served on
//! 127.0.0.1:0, stopped when the test ends, and waiting helpers.
//!
//! The tests run on a shared, noisy 2-core machine, so no verdict may depend on how fast it is:
//! wait for a condition (a counter, a message, a closed port) with [`wait_until`] or [`within`],
//! never for a fixed time, and give every wait the same generous [`LIMIT`].
#![allow(dead_code)]

use prime_server::pipeline::Running;
use prime_server::shutdown::Shutdown;
use prime_server::Server;
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
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
            .map(|w| w.snapshot().jobs)
            .sum()
    }

    /// Work functions of stage 1 that failed or were interrupted.
    pub fn failed(&self) -> u64 {
        self.running().worker_stats[0]
            .iter()
            .map(|w| w.snapshot().failed)
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

/// How long any test waits for something that should happen at once before it fails: far above
/// what it takes on a loaded machine, far below a hang.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A connection whose reads give up after [`LIMIT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Polls `cond` until it holds; fails with `what` if it still does not after [`LIMIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < LIMIT, "after {LIMIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Awaits `fut`; fails with `what` if it has not completed after [`LIMIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("after {LIMIT:?}: {what}"),
    }
}

/// Closes `s` with a reset (SO_LINGER 0), as a client that crashed or gave up abruptly: the
/// server's next read fails instead of seeing the end of the input.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a pointer to a live `linger` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(s);
}
