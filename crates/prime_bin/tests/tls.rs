//! HTTPS at the front, with real clients: curl over TLS (`--http2`, `-k`, `--http1.1`) and
//! Python's `ssl` + `http.client`; the certificate named by flags or by a topology file
//! (relative to it), and re-read on SIGHUP without dropping a connection. Certificates are made
//! here, at test time (rcgen).

mod common;
use common::{curl_version, free_port, need, prime_topology, temp_dir, wait_until, Proc};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A self-signed certificate for `localhost` and `127.0.0.1` with common name `cn`, and its key,
/// written as PEM to `dir/NAME.crt` and `dir/NAME.key`.
fn make_pair(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Whether curl, trusting only the certificate in file `ca`, gets the prime demo's answer for 7
/// from `url` (false while nothing listens there yet).
fn answers_seven(ca: &str, url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "5", "--cacert", ca, url])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == SEVEN.as_bytes())
}

/// Whether curl fails the TLS handshake with `args` (a certificate it does not trust).
fn curl_refuses(args: &[&str]) -> bool {
    !Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null"])
        .args(args)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

const SEVEN: &str = "{\"possible_prime\":7,\"is_prime\":true}";

#[test]
fn https_serves_http2_and_http11_by_alpn_to_curl_and_python() {
    if !need("curl", "curl") || !need("python3", "python3") {
        return;
    }
    let dir = temp_dir("tls-alpn");
    let (cert, key) = make_pair(&dir, "server", "first");
    let mut p = Proc::start(
        "prime_serverd",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "2",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let addr = p.listening();
    let port = addr.port();
    let url = |host: &str| format!("https://{host}:{port}/is_prime?possible_prime=7");
    let ca = cert.to_str().unwrap();
    // curl --http2, verifying the certificate (its IP and its name): HTTP/2 by ALPN.
    assert_eq!(
        curl_version(&["--http2", "--cacert", ca, &url("127.0.0.1")]),
        (200, "2".into(), SEVEN.into())
    );
    assert_eq!(
        curl_version(&["--http2", "--cacert", ca, &url("localhost")]),
        (200, "2".into(), SEVEN.into())
    );
    // curl -k (no verification, curl's own ALPN offer), and HTTP/1.1 when that is all it offers.
    assert_eq!(curl_version(&["-k", &url("127.0.0.1")]).0, 200);
    assert_eq!(
        curl_version(&["-k", "--http1.1", &url("127.0.0.1")]),
        (200, "1.1".into(), SEVEN.into())
    );
    // Plain HTTP on the HTTPS port is no request.
    assert!(curl_refuses(&[&format!("http://127.0.0.1:{port}/")]));

    // Python's ssl and http.client: verified against the certificate, keep-alive, a POST; a
    // client that offers no ALPN gets HTTP/1.1, one that offers h2 gets h2.
    let script = r#"
import http.client, socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
for n in (7, 8):
    c.request("GET", f"/is_prime?possible_prime={n}")
    r = c.getresponse()
    print(r.status, r.version, r.read().decode())
c.request("POST", "/is_prime", body=b"13")
r = c.getresponse()
print(r.status, r.version, r.read().decode())
print("alpn", c.sock.selected_alpn_protocol(), c.sock.version())
c.close()
ctx.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("127.0.0.1", port)) as s:
    with ctx.wrap_socket(s, server_hostname="localhost") as t:
        print("alpn", t.selected_alpn_protocol())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), ca])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("200 11 {SEVEN}"), "{text}");
    assert_eq!(
        lines[1], "200 11 {\"possible_prime\":8,\"is_prime\":false}",
        "{text}"
    );
    assert_eq!(
        lines[2], "200 11 {\"possible_prime\":13,\"is_prime\":true}",
        "{text}"
    );
    assert!(
        lines[3] == "alpn None TLSv1.3" || lines[3] == "alpn http/1.1 TLSv1.3",
        "{text}"
    );
    assert_eq!(lines[4], "alpn h2", "{text}");
    p.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_topology_names_tls_files_relative_to_itself_and_flags_override_them() {
    if !need("curl", "curl") {
        return;
    }
    let dir = temp_dir("tls-topology");
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let (file_cert, _) = make_pair(&dir.join("tls"), "server", "from the file");
    let (flag_cert, flag_key) = make_pair(&dir, "flag", "from the flags");
    let port = free_port();
    let (topology, _) = prime_topology(
        &dir,
        port,
        "ipc",
        "drain_seconds = 1",
        "tls_cert = \"tls/server.crt\"\ntls_key = \"tls/server.key\"",
        ["", ""],
        1,
    );
    let config = topology.to_str().unwrap();
    let url = format!("https://127.0.0.1:{port}/is_prime?possible_prime=7");
    // Run from elsewhere: the files are found beside the topology.
    let mut p = Proc::spawn_in("prime_serverd", &["--config", config], Path::new("/"));
    let addr = p.listening();
    assert_eq!(addr.port(), port);
    wait_until("the prime demo never answered over HTTPS", || {
        answers_seven(file_cert.to_str().unwrap(), &url)
    });
    assert_eq!(
        curl_version(&["--cacert", file_cert.to_str().unwrap(), &url]),
        (200, "2".into(), SEVEN.into())
    );
    p.stop();
    // The flags given override the file's.
    let mut p = Proc::start(
        "prime_serverd",
        &[
            "--config",
            config,
            "--tls-cert",
            flag_cert.to_str().unwrap(),
            "--tls-key",
            flag_key.to_str().unwrap(),
        ],
    );
    p.listening();
    wait_until(
        "the prime demo never answered with the flags' certificate",
        || answers_seven(flag_cert.to_str().unwrap(), &url),
    );
    assert!(curl_refuses(&[
        "--cacert",
        file_cert.to_str().unwrap(),
        &url
    ]));
    p.stop();
    // A certificate that cannot be read stops the daemon at start, naming the file.
    let out = Command::new(common::bin("prime_echod"))
        .args([
            &format!("127.0.0.1:{}", free_port()),
            "--tls-cert",
            dir.join("missing.crt").to_str().unwrap(),
            "--tls-key",
            flag_key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.crt"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Python's ssl and http.client, driven line by line: `open NAME` connects (printing the
/// certificate's SHA-256), `get NAME PATH` asks on that connection (printing the status and the
/// connection's certificate), `fp FILE` prints a PEM file's certificate's SHA-256.
const DRIVER: &str = r#"
import hashlib, http.client, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = {}
def fp(der):
    return hashlib.sha256(der).hexdigest()
for line in sys.stdin:
    cmd, arg, *rest = line.split()
    if cmd == "fp":
        print(fp(ssl.PEM_cert_to_DER_cert(open(arg).read())), flush=True)
    elif cmd == "open":
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        c.connect()
        conns[arg] = c
        print(fp(c.sock.getpeercert(binary_form=True)), flush=True)
    elif cmd == "get":
        c = conns[arg]
        c.request("GET", rest[0])
        r = c.getresponse()
        r.read()
        print(r.status, fp(c.sock.getpeercert(binary_form=True)), flush=True)
"#;

struct Driver {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Driver {
    fn new(port: u16) -> Driver {
        let mut child = Command::new("python3")
            .args(["-c", DRIVER, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Driver { child, out }
    }

    fn ask(&mut self, line: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        self.out.read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "the driver died at {line:?}");
        answer.trim().to_string()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `to` with `from` in one step (a rename), as a deployment tool would.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn sighup_rereads_the_certificate_without_dropping_connections() {
    if !need("python3", "python3") {
        return;
    }
    let dir = temp_dir("tls-reload");
    let (c1, k1) = make_pair(&dir, "one", "first");
    let (c2, k2) = make_pair(&dir, "two", "second");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    replace(&c1, &cert);
    replace(&k1, &key);
    let log = dir.join("echod.log");
    let mut echod = Proc::start_logging(
        "prime_echod",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let addr = echod.listening();
    let mut py = Driver::new(addr.port());
    let (fp1, fp2) = (
        py.ask(&format!("fp {}", c1.display())),
        py.ask(&format!("fp {}", c2.display())),
    );
    assert_ne!(fp1, fp2);
    assert_eq!(py.ask("open a"), fp1);
    assert_eq!(py.ask("get a /one"), format!("200 {fp1}"));
    let logged = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(what)
            .count()
    };

    // New files, SIGHUP: new connections get the new certificate, the open one goes on.
    replace(&c2, &cert);
    replace(&k2, &key);
    echod.signal("-HUP");
    wait_until("no reload was logged", || {
        logged("TLS certificate reloaded") == 1
    });
    assert_eq!(py.ask("open b"), fp2);
    assert_eq!(py.ask("get b /two"), format!("200 {fp2}"));
    assert_eq!(py.ask("get a /three"), format!("200 {fp1}"));

    // A bad certificate: logged, and the one in force stays.
    std::fs::write(dir.join("bad.pem"), "not a certificate\n").unwrap();
    replace(&dir.join("bad.pem"), &cert);
    echod.signal("-HUP");
    wait_until("the bad certificate was not reported", || {
        logged("keeping the certificate in force") == 1
    });
    assert_eq!(py.ask("open c"), fp2);
    assert_eq!(py.ask("get c /four"), format!("200 {fp2}"));
    assert_eq!(py.ask("get a /five"), format!("200 {fp1}"));
    assert!(echod.child.try_wait().unwrap().is_none(), "SIGHUP ended it");
    drop(py);
    echod.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("cert.pem"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
