//! Message-size limits with real processes: a hostile peer that sends a 64 MiB frame to a bound
//! socket of a running deployment must not make the daemon allocate it. The peer speaks ZMTP 3.0
//! by hand over the socket file (the greeting, a READY command, then a frame header announcing 64
//! MiB and the bytes), so the test sees exactly when the daemon hangs up on it, and no zmq library
//! of ours sits between the test and the wire.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const FRAME: u64 = 64 << 20;

/// How much more a daemon's peak resident memory may grow while it is sent a 64 MiB frame:
/// far below the frame, far above what serving the test's requests costs.
const GROWTH_KIB: u64 = 16 << 10;

/// A process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A ZMTP 3.0 peer written by hand, with the NULL mechanism.
struct RawPeer(UnixStream);

impl RawPeer {
    /// Connects to the socket file at `path` and greets as a `socket_type` socket.
    fn connect(path: &Path, socket_type: &str) -> RawPeer {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_write_timeout(Some(LIMIT)).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff; // signature: 0xff, 8 bytes of padding, 0x7f
        greeting[9] = 0x7f;
        greeting[10] = 3; // version 3.0
        greeting[12..16].copy_from_slice(b"NULL"); // mechanism, zero-padded; as-server 0
        s.write_all(&greeting).unwrap();
        let mut body = vec![5];
        body.extend_from_slice(b"READY");
        body.push(11);
        body.extend_from_slice(b"Socket-Type");
        body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
        body.extend_from_slice(socket_type.as_bytes());
        let mut ready = vec![0x04, body.len() as u8]; // a short command frame
        ready.extend_from_slice(&body);
        s.write_all(&ready).unwrap();
        let mut theirs = [0u8; 64];
        s.read_exact(&mut theirs).unwrap();
        assert_eq!((theirs[0], theirs[9]), (0xff, 0x7f), "not a ZMTP greeting");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        RawPeer(s)
    }

    /// Sends one message frame of `len` bytes; stops early when the peer hangs up.
    fn send_frame(&mut self, len: u64) {
        let mut head = vec![0x02]; // a long frame, the last of its message
        head.extend_from_slice(&len.to_be_bytes());
        if self.0.write_all(&head).is_err() {
            return;
        }
        let chunk = vec![0x5a; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if self.0.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
    }

    /// Whether the peer has closed the connection (what it sent before is read and dropped).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.0.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ),
        }
    }
}

#[test]
fn a_64_mib_frame_to_any_bound_socket_is_refused_without_being_allocated() {
    let dir = temp_dir("limits");
    let cfg = echo_topology_in(
        &dir,
        &dir,
        1,
        60,
        &format!("zmq_listen = \"ipc://{}/zmq\"", &dir.display()),
    );
    let c = cfg.to_str().unwrap();
    let mut proxy = Proc::start("prime_proxyd", &["--config", c, "--stage", "echo"]);
    let worker = Proc::start("prime_workerd", &["--config", c, "--stage", "echo"]);
    let mut front = Proc::start("prime_httpd", &["--config", c]);
    let addr = front.listening();
    assert_echoes(addr, 3, "before");

    let targets = [
        ("proxy upstream", "in", "DEALER"),
        ("proxy downstream", "out", "DEALER"),
        ("front loopback", "lb0", "DEALER"),
        ("front interrupt", "int0", "SUB"),
        ("front zmq_listen", "zmq", "DEALER"),
    ];
    for (what, file, socket_type) in targets {
        let daemon = if what.starts_with("proxy") {
            &mut proxy
        } else {
            &mut front
        };
        let pid = daemon.child.id();
        let before = peak_rss_kib(pid);
        let mut peer = RawPeer::connect(&dir.join(file), socket_type);
        peer.send_frame(FRAME);
        // Either the daemon hangs up (the frame is over its limit) or it takes the frame in,
        // which shows in its peak memory.
        wait_until(&format!("{what}: neither refused nor taken in"), || {
            peer.closed() || peak_rss_kib(pid) - before > GROWTH_KIB
        });
        let grew = peak_rss_kib(pid) - before;
        assert!(
            grew <= GROWTH_KIB,
            "{what}: peak memory grew by {grew} KiB on a 64 MiB frame"
        );
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "{what}: the daemon died"
        );
    }

    assert_echoes(addr, 5, "after");
    for p in [front, proxy, worker] {
        p.stop();
    }
    let _ = std::fs::remove_dir_all(dir);
}
