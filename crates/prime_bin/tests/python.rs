//! Mixed pipelines: Python workers (the `python/` package, pyzmq) serving the prime-testing stage
//! of a Rust pipeline. The test installs what it needs itself: a virtual environment under
//! cargo's target directory with the package and pyzmq from PyPI.

mod common;
use common::python::python;
use common::*;
use std::process::Command;

#[test]
fn python_workers_serve_the_prime_testing_stage_of_a_rust_pipeline() {
    mixed_pipeline("mixed", "ipc", false);
}

#[test]
fn python_workers_serve_the_prime_testing_stage_with_curve_over_tcp() {
    mixed_pipeline("mixed-curve", "tcp", true);
}

/// The prime demo as separate processes, its second stage served by two Python worker threads
/// (examples/python/prime_worker.py), over `scheme` (`ipc` or `tcp`); when `secure`, with a
/// `[security]` section and keys written by `prime_keygen`.
fn mixed_pipeline(tag: &str, scheme: &str, secure: bool) {
    let py = python().clone();
    let dir = temp_dir(tag);
    let port = free_port();
    let zmq_ep = format!("tcp://127.0.0.1:{}", free_port());
    let cfg = dir.join("mixed.toml");
    let ep = |name: &str| match scheme {
        "ipc" => format!("ipc://{}/{name}", dir.display()),
        _ => format!("tcp://127.0.0.1:{}", free_port()),
    };
    let keys = |text: &str| {
        if secure {
            text.to_string()
        } else {
            String::new()
        }
    };
    if secure {
        let out = Command::new(bin("prime_keygen"))
            .arg("--dir")
            .arg(dir.join("keys"))
            .args([
                "front",
                "parse-proxy",
                "parse-workers",
                "test-proxy",
                "test-workers",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    std::fs::write(
        &cfg,
        format!(
            r#"drain_seconds = 2
[heartbeat]
interval_ms = 500
{}
[[server]]
listen = "127.0.0.1:{port}"
loopback = "{}"
interrupt = "{}"
{}
{}
[[stage]]
name = "parse"
work = "prime_parse"
upstream = "{}"
downstream = "{}"
{}
[[stage]]
name = "test"
work = "prime_test"
upstream = "{}"
downstream = "{}"
{}
"#,
            keys("[security]\nkeys = \"keys\""),
            ep("lb"),
            ep("int"),
            keys("key = \"front\""),
            if secure {
                String::new()
            } else {
                format!("zmq_listen = \"{zmq_ep}\"")
            },
            ep("parse_in"),
            ep("parse_out"),
            keys("proxy_key = \"parse-proxy\"\nworker_key = \"parse-workers\""),
            ep("test_in"),
            ep("test_out"),
            keys("proxy_key = \"test-proxy\"\nworker_key = \"test-workers\""),
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let p1 = Proc::start("prime_proxyd", &["--config", c, "--stage", "parse"]);
    let p2 = Proc::start("prime_proxyd", &["--config", c, "--stage", "test"]);
    let w1 = Proc::start("prime_workerd", &["--config", c, "--stage", "parse"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/prime_worker.py"
    );
    let mut pyw = Proc {
        child: Command::new(&py)
            .args([script, "--config", c, "--stage", "test", "--workers", "2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        name: "python prime worker".into(),
    };
    {
        use std::io::BufRead;
        let out = pyw.child.stdout.take().unwrap();
        let line = std::io::BufReader::new(out)
            .lines()
            .next()
            .unwrap()
            .unwrap();
        assert!(line.contains("serving stage test"), "{line}");
    }
    let mut f = Proc::start("prime_httpd", &["--config", c]);
    let addr = f.listening();
    let mut s = connect(addr);
    for (n, prime) in [
        (32416190071u64, true),
        (1000, false),
        (2, true),
        (1, false),
        (999983, true),
    ] {
        let (status, head, body) =
            http(&mut s, &get(&format!("/is_prime?possible_prime={n}"))).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("x-worker: python"), "{head}");
        assert_eq!(
            body,
            format!("{{\"possible_prime\":{n},\"is_prime\":{prime}}}")
        );
    }
    // Stage 1 (Rust) still answers bad requests itself.
    assert_eq!(
        http(&mut s, &get("/is_prime?possible_prime=x")).unwrap().0,
        400
    );
    if !secure {
        // A zmq client's job says "zmq" in its header: the Python stage 2 answers the bare JSON
        // (docs/PROTOCOL.md §3, "The prime demo").
        let script = r#"
import sys
from prime_server import Client
c = Client(sys.argv[1])
for n, prime in [(32416190071, "true"), (1000, "false"), (2, "true")]:
    got = c.request(str(n).encode())
    assert got == (200, b'{"possible_prime":%d,"is_prime":%s}' % (n, prime.encode())), got
print("ok")
"#;
        let out = Command::new(&py)
            .args(["-c", script, &zmq_ep])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The Python worker stops cleanly on SIGTERM.
    pyw.signal("-TERM");
    assert!(pyw.wait_exit(LIMIT).success());
    f.stop();
    w1.stop();
    p2.stop();
    p1.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_python_package_passes_its_own_tests() {
    let py = python();
    let pytest_ok = Command::new(py)
        .args(["-c", "import pytest"])
        .status()
        .is_ok_and(|s| s.success());
    if !pytest_ok {
        let out = Command::new(py)
            .args(["-m", "pip", "install", "-q", "pytest"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install pytest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python/tests");
    let out = Command::new(py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_clients_use_the_zmq_front() {
    let py = python().clone();
    let zmq_port = free_port();
    let zmq_ep = format!("tcp://127.0.0.1:{zmq_port}");
    let mut server = Proc::start(
        "prime_serverd",
        &[
            "127.0.0.1:0",
            "2",
            "0",
            "/health",
            "--zmq-listen",
            &zmq_ep,
            "--timeout",
            "5",
        ],
    );
    let _http = server.listening();
    let script = r#"
import sys, zmq
from prime_server import Client
c = Client(sys.argv[1])
assert c.request(b"32416190071") == (200, b'{"possible_prime":32416190071,"is_prime":true}'), c.request(b"32416190071")
status, body = c.request(b"nope")
assert status == 400 and b"decimal number" in body, (status, body)
assert c.request(b"/health") == (200, b"OK")
# Many in flight on one DEALER; each answer matches its request.
ids = {c.send(str(n).encode()): n for n in range(1000, 1100)}
for rid, n in ids.items():
    status, body = c.receive(rid, timeout=30)
    assert status == 200 and body.startswith(b'{"possible_prime":%d,' % n), (n, status, body)
# A REQ socket works as well (it adds the empty delimiter itself).
req = zmq.Context.instance().socket(zmq.REQ)
req.connect(sys.argv[1])
req.send_multipart([b"id-1", b"7"])
assert req.recv_multipart() == [b"id-1", b"200", b'{"possible_prime":7,"is_prime":true}']
# A malformed request (no id) gets a 400, not silence: the id frame is empty.
d = zmq.Context.instance().socket(zmq.DEALER)
d.connect(sys.argv[1])
d.send_multipart([b""])
assert d.poll(30000), "no answer to a malformed request"
assert d.recv_multipart() == [b"", b"", b"400", b"a request is [empty][id][payload...]"]
# Every payload kind gets one well-defined answer (docs/PROTOCOL.md §5, zmq): the job's header says
# "zmq", so the demo's stage 1 takes one decimal frame and nothing else, however the frames look.
import struct
target = b"/is_prime?possible_prime=7"
head = b"HQ\x01\x00" + struct.pack("<H", 3) + b"GET" + struct.pack("<I", len(target)) + target + struct.pack("<H", 0)
NOT_A_NUMBER = b"expected a decimal number from 0 to 18446744073709551615"
NOT_ONE_FRAME = b"expected one frame: a decimal number from 0 to 18446744073709551615"
for frames, want in [
    ([head, b""], (400, NOT_ONE_FRAME)),   # an HTTP request head is not an HTTP request here
    ([head], (400, NOT_A_NUMBER)),
    ([b"7", b"extra"], (400, NOT_ONE_FRAME)),
    ([b" 7\n"], (200, b'{"possible_prime":7,"is_prime":true}')),
    ([b"18446744073709551616"], (400, NOT_A_NUMBER)),
    ([b""], (400, NOT_A_NUMBER)),
    ([], (400, b"a request needs at least one payload frame")),
    ([b"1"] * 65, (400, b"too many frames")),
]:
    got = c.request(*frames)
    assert got == want, (frames[:2], got)
print("ok")
"#;
    let out = Command::new(&py)
        .args(["-c", script, &zmq_ep])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

#[test]
fn the_broker_demo_rust_and_python_clients_and_servers_each_get_their_own_data() {
    let py = python().clone();
    let dir = temp_dir("broker");
    let zmq_ep = format!("tcp://127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/broker/broker.toml"
    ))
    .unwrap()
    .replace("/tmp/prime_server_broker", dir.to_str().unwrap())
    .replace("127.0.0.1:8002", &format!("127.0.0.1:{}", free_port()))
    .replace("tcp://127.0.0.1:8003", &zmq_ep);
    let cfg = dir.join("broker.toml");
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let broker = Proc::start("prime_proxyd", &["--config", c, "--stage", "echo"]);
    let mut front = Proc::start("prime_httpd", &["--config", c]);
    front.listening();
    let rust_server = Proc::start("prime_workerd", &["--config", c, "--stage", "echo"]);
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/broker");
    let py_server = Proc {
        child: Command::new(&py)
            .args([&format!("{demo}/echo_worker.py"), c])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        name: "python echo worker".into(),
    };
    let rust_client = bin("prime_echo_client");
    let rc = Command::new(&rust_client)
        .args([&zmq_ep, "2"])
        .output()
        .unwrap();
    let pc = Command::new(&py)
        .args([&format!("{demo}/echo_client.py"), &zmq_ep, "2"])
        .output()
        .unwrap();
    for (who, out) in [("rust", &rc), ("python", &pc)] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{who}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("someone else's 0, errors 0"), "{who}: {text}");
    }
    py_server.stop();
    rust_server.stop();
    front.stop();
    broker.stop();
    let _ = std::fs::remove_dir_all(dir);
}
