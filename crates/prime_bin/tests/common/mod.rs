//! What the daemon tests share: starting real daemon processes, free ports, temporary
//! directories, a small HTTP/1.1 client and a waiting helper.
//!
//! The tests run on a shared, noisy 2-core machine, so no verdict may depend on how fast it is:
//! wait for a condition (an answer, a counter, a refused connection, an exit) with
//! [`wait_until`], never for a fixed time, and give every wait the same generous [`LIMIT`].
#![allow(dead_code)]

pub mod exposition;
pub mod h2;
pub mod python;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any test waits for something that should happen promptly before it fails: far above
/// what it takes on a loaded machine, far below a hang.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds; fails with `what` if it still does not after [`LIMIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < LIMIT, "after {LIMIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn bin(name: &str) -> PathBuf {
    // Cargo builds every binary of the package for its integration tests.
    let mut p = PathBuf::from(env!("CARGO_BIN_EXE_prime_serverd"));
    p.set_file_name(name);
    p
}

/// A daemon that is killed if the test ends without stopping it.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_logging(name, args, Stdio::null())
    }

    /// Like [`Proc::start`], with its log (stderr) going to `stderr`.
    pub fn start_logging(name: &str, args: &[&str], stderr: Stdio) -> Proc {
        Proc::spawn(name, Command::new(bin(name)).args(args).stderr(stderr))
    }

    /// Like [`Proc::start`], run in folder `cwd`.
    pub fn spawn_in(name: &str, args: &[&str], cwd: &Path) -> Proc {
        Proc::spawn(
            name,
            Command::new(bin(name))
                .args(args)
                .current_dir(cwd)
                .stderr(Stdio::null()),
        )
    }

    /// Like [`Proc::start_logging`], in a process whose open-file limit, soft and hard, is
    /// `nofile` (so the daemon cannot raise it).
    pub fn start_with_nofile(name: &str, args: &[&str], stderr: Stdio, nofile: u64) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin(name));
        cmd.args(args).stderr(stderr);
        // SAFETY: between fork and exec the closure makes one async-signal-safe system call and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Proc::spawn(name, &mut cmd)
    }

    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// Waits for the "listening on ADDR" line of a front server (skipping lines before it,
    /// such as "metrics on http://ADDR/metrics").
    pub fn listening(&mut self) -> SocketAddr {
        let out = self.child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let mut skipped = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("{}: no address in {skipped:?}", self.name);
            };
            if let Some(addr) = line.split_whitespace().find_map(|w| w.parse().ok()) {
                break addr;
            }
            skipped.push(line);
        };
        std::thread::spawn(move || for _ in lines {});
        addr
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < within,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(mut self) {
        self.signal("-TERM");
        let status = self.wait_exit(LIMIT);
        assert!(status.success(), "{} exited with {status:?}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ps-{tag}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One HTTP/1.1 request on a keep-alive connection: (status, headers, body), or `None` if the
/// connection was closed before an answer.
pub fn http(s: &mut TcpStream, req: &str) -> Option<(u16, String, String)> {
    s.write_all(req.as_bytes()).ok()?;
    read_answer(s)
}

/// Reads one HTTP/1.1 answer, as [`http`] does after sending its request.
pub fn read_answer(s: &mut TcpStream) -> Option<(u16, String, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // A signal to this process (a child stopped or ended) interrupts a blocked read: that
        // is not the peer closing.
        let n = match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.ok()?,
        };
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap();
                return Some((status, head, text[end + 4..end + 4 + len].to_string()));
            }
        }
    }
}

/// A HEAD request: the answer's head (no body follows).
pub fn head_request(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(read_some(s, &mut b).unwrap(), 1, "closed");
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// A connection whose reads give up after [`LIMIT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// An echo deployment's topology file in `dir`: `servers` fronts (s0, s1, …; loopback `lbN` and
/// interrupt `intN`) with `timeout_seconds` and the lines of `server_extra` each, one echo stage
/// (`in`, `out`, one worker thread), fast heartbeats (200 ms × 3), every socket file in `ipc_dir`.
pub fn echo_topology_in(
    dir: &Path,
    ipc_dir: &Path,
    servers: usize,
    timeout_seconds: u64,
    server_extra: &str,
) -> PathBuf {
    let mut text =
        String::from("drain_seconds = 2\n[heartbeat]\ninterval_ms = 200\nliveness = 3\n");
    for i in 0..servers {
        text += &format!(
            "[[server]]\nname = \"s{i}\"\nlisten = \"127.0.0.1:{}\"\nloopback = \"ipc://{d}/lb{i}\"\ninterrupt = \"ipc://{d}/int{i}\"\ntimeout_seconds = {timeout_seconds}\n{server_extra}\n",
            free_port(),
            d = ipc_dir.display()
        );
    }
    text += &format!(
        "[[stage]]\nname = \"echo\"\nwork = \"echo\"\nupstream = \"ipc://{d}/in\"\ndownstream = \"ipc://{d}/out\"\nworkers = 1\n",
        d = ipc_dir.display()
    );
    let path = dir.join("echo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// [`echo_topology_in`] with the socket files beside the topology file and nothing extra.
pub fn echo_topology(dir: &Path, servers: usize, timeout_seconds: u64) -> PathBuf {
    echo_topology_in(dir, dir, servers, timeout_seconds, "")
}

/// `n` requests to `addr`, each on a connection of its own, all echoed.
pub fn assert_echoes(addr: SocketAddr, n: usize, tag: &str) {
    for k in 0..n {
        let path = format!("/{tag}-{k}");
        let mut s = connect(addr);
        let (status, _, body) = http(&mut s, &get(&path)).expect("connection closed");
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.starts_with(&format!("GET {path} ")), "{path}: {body}");
    }
}

pub fn proxy(cfg: &str) -> Proc {
    Proc::start("prime_proxyd", &["--config", cfg, "--stage", "echo"])
}

pub fn worker(cfg: &str) -> Proc {
    Proc::start("prime_workerd", &["--config", cfg, "--stage", "echo"])
}

pub fn front(cfg: &str, name: &str) -> (Proc, SocketAddr) {
    let mut p = Proc::start("prime_httpd", &["--config", cfg, "--server", name]);
    let addr = p.listening();
    (p, addr)
}

/// The prime demo's topology: two stages (`parse` running `prime_parse`, `test` running
/// `prime_test`) behind one front listening on `127.0.0.1:PORT`, every zmq endpoint over
/// `scheme` (`ipc` in `dir`, else `tcp` on 127.0.0.1 with free ports), written to
/// `dir/topology.toml`. `head` is put before the sections (drain, heartbeat, `[security]`…),
/// `server` into the `[[server]]` section and `stages[i]` into the i-th `[[stage]]`. Returns the
/// file and the endpoints by name (`loopback`, `interrupt`, `parse_in`, `parse_out`, `test_in`,
/// `test_out`).
pub fn prime_topology(
    dir: &Path,
    port: u16,
    scheme: &str,
    head: &str,
    server: &str,
    stages: [&str; 2],
    workers: usize,
) -> (PathBuf, std::collections::HashMap<&'static str, String>) {
    let names = [
        "loopback",
        "interrupt",
        "parse_in",
        "parse_out",
        "test_in",
        "test_out",
    ];
    let eps: std::collections::HashMap<&'static str, String> = names
        .into_iter()
        .map(|name| {
            let ep = match scheme {
                "ipc" => format!("ipc://{}/{name}", dir.display()),
                _ => format!("tcp://127.0.0.1:{}", free_port()),
            };
            (name, ep)
        })
        .collect();
    let mut text = format!(
        "{head}\n[[server]]\nlisten = \"127.0.0.1:{port}\"\nloopback = \"{}\"\ninterrupt = \"{}\"\n{server}\n",
        eps["loopback"], eps["interrupt"]
    );
    for ((name, work), extra) in [("parse", "prime_parse"), ("test", "prime_test")]
        .into_iter()
        .zip(stages)
    {
        text += &format!(
            "[[stage]]\nname = \"{name}\"\nwork = \"{work}\"\nupstream = \"{}\"\ndownstream = \"{}\"\nworkers = {workers}\n{extra}\n",
            eps[format!("{name}_in").as_str()],
            eps[format!("{name}_out").as_str()],
        );
    }
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).unwrap();
    (path, eps)
}

/// Runs the real `prime_keygen` for `names` into `dir/keys`, and returns what it did.
pub fn keygen(dir: &Path, names: &[&str]) -> std::process::Output {
    Command::new(bin("prime_keygen"))
        .arg("--dir")
        .arg(dir.join("keys"))
        .args(names)
        .output()
        .unwrap()
}

/// [`keygen`], which must succeed.
pub fn keygen_ok(dir: &Path, names: &[&str]) {
    let out = keygen(dir, names);
    assert!(out.status.success(), "prime_keygen: {out:?}");
}

/// The path of `nc` (Debian's netcat-openbsd), installed if it is missing (see [`need`]);
/// the tests that use it cannot run without it.
pub fn nc() -> &'static str {
    assert!(
        need("nc", "netcat-openbsd"),
        "nc is required for this test (apt-get install netcat-openbsd)"
    );
    "nc"
}

/// `s.read(buf)`, read again when a signal to this process (a child stopped or ended)
/// interrupts it: that is not the peer's doing.
pub fn read_some(s: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Whether command `cmd` can be run, installing Debian's package `package` for it if it is
/// missing (as root, through apt-get). `false`, with a line on stderr saying why, only when the
/// package cannot be had: the caller then skips what needs it.
pub fn need(cmd: &str, package: &str) -> bool {
    let have = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have() {
        return true;
    }
    // One installer at a time: tests run in parallel, and apt-get holds a lock.
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if have() {
        return true;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let _ = apt(&["update", "-qq"]);
    let installed = apt(&["install", "-y", "-qq", package]);
    if have() {
        return true;
    }
    eprintln!(
        "skipping: `{cmd}` is missing and Debian's {package} could not be installed ({:?})",
        installed.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    false
}

/// curl with `args`: (status, HTTP version as curl names it, body).
pub fn curl_version(args: &[&str]) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, version) = tail.split_once(' ').unwrap();
    (code.parse().unwrap(), version.to_string(), body.to_string())
}
