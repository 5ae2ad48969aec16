//! The walk-throughs a newcomer follows, run as written: the commands are read from README.md
//! and examples/broker/README.md and run as a user would run them (real daemons, curl, the Python
//! examples in the tests' virtual environment), with the example topologies' socket files moved
//! to a fresh folder that does not exist yet (the daemons make it, as they must on a fresh
//! machine) and their ports to free ones, so that the tests run beside other deployments. A line
//! of the walk-throughs this file does not know how to run fails the test: a changed README
//! changes the test with it.

mod common;
use common::exposition::value;
use common::python::python;
use common::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The repository.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first fenced block of language `lang` after the line that starts with `heading` in the
/// repository file `path`.
fn block(path: &str, heading: &str, lang: &str) -> String {
    let text = read(path);
    let at = text
        .lines()
        .position(|l| l.starts_with(heading))
        .unwrap_or_else(|| panic!("{path}: no {heading:?}"));
    let mut lines = text.lines().skip(at + 1);
    lines
        .by_ref()
        .find(|l| *l == format!("```{lang}"))
        .unwrap_or_else(|| panic!("{path}: no {lang} block after {heading:?}"));
    let body: Vec<&str> = lines.take_while(|l| *l != "```").collect();
    body.join("\n") + "\n"
}

/// The first `code span` holding `--config` in the paragraph of `path` that starts with `item`
/// (a step of a walk-through, e.g. `3. **Start one**`).
fn inline_command(path: &str, item: &str) -> String {
    let text = read(path);
    let at = text
        .find(item)
        .unwrap_or_else(|| panic!("{path}: no {item:?}"));
    let para = &text[at..text[at..].find("\n\n").map_or(text.len(), |e| at + e)];
    para.split('`')
        .skip(1)
        .step_by(2)
        .find(|span| span.contains("--config"))
        .unwrap_or_else(|| panic!("{path}: no command in {para:?}"))
        .to_string()
}

/// A shell line's words, as sh splits them: '…' taken literally, "…" and bare words with
/// `$NAME` expanded from `vars`, a word starting with `#` ending the line.
fn words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let expand = |s: &str| -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out += &rest[..i];
            let name: String = rest[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out += vars
                .get(&name)
                .unwrap_or_else(|| panic!("${name} is not set in {line:?}"));
            rest = &rest[i + 1 + name.len()..];
        }
        out + rest
    };
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none_or(|c| *c == '#') {
            return out;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '\'' => word.extend(chars.by_ref().take_while(|c| *c != '\'')),
                '"' => {
                    let quoted: String = chars.by_ref().take_while(|c| *c != '"').collect();
                    word += &expand(&quoted);
                }
                _ => {
                    let mut bare = String::from(c);
                    while let Some(c) =
                        chars.next_if(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
                    {
                        bare.push(c);
                    }
                    word += &expand(&bare);
                }
            }
        }
        out.push(word);
    }
}

/// A process the walk-through started in the background, with where its output went.
struct Job {
    line: String,
    proc: Proc,
    out: PathBuf,
}

/// One user's shell: the variables set, the background jobs, the last command's output; the
/// example files' socket folders and ports moved (see the module's comment).
struct Walk {
    dir: PathBuf,
    /// Where the socket files go: a folder that does not exist before the walk.
    ipc: PathBuf,
    ports: HashMap<u16, u16>,
    vars: HashMap<String, String>,
    jobs: Vec<Job>,
    started: usize,
    /// The stdout of the last command run in the foreground.
    last: Option<String>,
    /// The stdout of every curl and nc run in the foreground, in order.
    outputs: Vec<String>,
}

impl Walk {
    fn new(tag: &str) -> Walk {
        let dir = temp_dir(tag);
        let ipc = dir.join("fresh/ipc");
        assert!(!ipc.exists());
        Walk {
            dir,
            ipc,
            ports: HashMap::new(),
            vars: HashMap::from([
                ("PWD".to_string(), ROOT.to_string()),
                (
                    "PATH".to_string(),
                    std::env::var("PATH").unwrap_or_default(),
                ),
            ]),
            jobs: Vec::new(),
            started: 0,
            last: None,
            outputs: Vec::new(),
        }
    }

    /// The free port standing in for the example's `port`.
    fn port(&mut self, port: u16) -> u16 {
        *self.ports.entry(port).or_insert_with(free_port)
    }

    /// `text` with the examples' socket folders and ports moved (`127.0.0.1:PORT`, `*:PORT`, and
    /// nc's `127.0.0.1 PORT`).
    fn moved(&mut self, text: &str) -> String {
        let ipc = self.ipc.display().to_string();
        let text = text
            .replace("/tmp/prime_server_broker", &ipc)
            .replace("/tmp/prime_server", &ipc);
        let mut out = String::new();
        let mut rest = text.as_str();
        let next_host = |r: &str| {
            ["127.0.0.1:", "*:", "127.0.0.1 "]
                .iter()
                .filter_map(|h| r.find(h).map(|i| (i, h.len())))
                .min()
        };
        while let Some((i, len)) = next_host(rest) {
            let (head, tail) = rest.split_at(i + len);
            out += head;
            let digits = tail.chars().take_while(char::is_ascii_digit).count();
            if digits > 0 {
                let port = self.port(tail[..digits].parse().unwrap());
                out += &port.to_string();
            }
            rest = &tail[digits..];
        }
        out + rest
    }

    /// A command's argument: an example topology becomes its moved copy.
    fn arg(&mut self, word: &str) -> String {
        if word.ends_with(".toml") && Path::new(word).is_relative() {
            let copy = self.dir.join(Path::new(word).file_name().unwrap());
            if !copy.exists() {
                let text = self.moved(&read(word));
                std::fs::write(&copy, text).unwrap();
            }
            return copy.display().to_string();
        }
        self.moved(word)
    }

    /// Runs the lines of a walk-through.
    fn run(&mut self, lines: &str) {
        self.run_with(lines, |_, _| {});
    }

    /// Runs the lines of a walk-through, calling `before` with each line first.
    fn run_with(&mut self, lines: &str, mut before: impl FnMut(&mut Walk, &str)) {
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            before(self, line);
            self.line(line);
        }
    }

    fn line(&mut self, line: &str) {
        if let Some(expected) = line.strip_prefix("# ") {
            // The output the line above shows (a line like `# {…}` or `# (…)`), or prose.
            if expected.starts_with(['{', '(']) {
                let got = self
                    .last
                    .take()
                    .unwrap_or_else(|| panic!("no output for {line:?}"));
                assert_eq!(got.trim(), expected, "the README shows {expected}");
            }
            return;
        }
        if line.starts_with("kill $(jobs -p); wait") {
            self.stop_all();
            return;
        }
        let mut w = words(line, &self.vars);
        let background = w.last().is_some_and(|l| l == "&");
        if background {
            w.pop();
        }
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        match w.as_slice() {
            // The tests run the binaries cargo built for them, and the venv of common::python,
            // which has the package installed from python/ (what `pip install ./python` does).
            ["cargo", "build", ..] => {}
            ["python3", "-m", "venv", ..] => {}
            ["pip", "install", "./python"] => {}
            [assignment] if assignment.contains('=') => {
                let (name, value) = assignment.split_once('=').unwrap();
                let value = self.arg(value);
                self.vars.insert(name.to_string(), value);
            }
            [program, args @ ..] if program.starts_with("prime_") && background => {
                let args: Vec<String> = args.iter().map(|a| self.arg(a)).collect();
                self.spawn(line, Command::new(bin(program)).args(args));
            }
            ["python3", script, args @ ..] if script.ends_with(".py") && background => {
                let args: Vec<String> = args.iter().map(|a| self.arg(a)).collect();
                self.spawn(line, Command::new(python()).arg(script).args(args));
            }
            ["python3", "-c", code] if !background => {
                let out = Command::new(python())
                    .args(["-c", &self.moved(code)])
                    .current_dir(ROOT)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{line}: {out:?}");
                self.last = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            // A user stops the server of the line before (Ctrl-C) and starts prime_serverd,
            // which is what `cargo run` runs; the test runs the build cargo made for it, on the
            // moved port when the line names none.
            ["cargo", "run", "--release", rest @ ..] if !background => {
                self.stop_all();
                let mut args: Vec<String> = match rest {
                    ["--", args @ ..] => args.iter().map(|a| self.arg(a)).collect(),
                    [] => Vec::new(),
                    _ => panic!("{line:?}: expected `cargo run --release [-- ARGS]`"),
                };
                if !args.iter().any(|a| a.contains(':') && !a.starts_with('-')) {
                    args.push(format!("127.0.0.1:{}", self.port(8002)));
                }
                let port: u16 = args
                    .iter()
                    .find_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
                    .unwrap();
                self.spawn(line, Command::new(bin("prime_serverd")).args(args));
                // Up before the next line (a user reads its first log lines first).
                wait_until(&format!("{line}: nothing listens on {port}"), || {
                    self.check_jobs();
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                });
            }
            // `printf INPUT | nc -q1 HOST PORT`: until the server listens, then what nc printed.
            ["printf", input, "|", "nc", nc_args @ ..] if !background => {
                let nc_args = self.moved(&nc_args.join(" "));
                let t = Instant::now();
                let printed = loop {
                    let out = Command::new("sh")
                        .arg("-c")
                        .arg(format!("printf '{input}' | {} {nc_args}", nc()))
                        .output()
                        .unwrap();
                    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
                    if !printed.is_empty() || t.elapsed() > LIMIT {
                        break printed;
                    }
                    self.check_jobs();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                };
                self.outputs.push(printed.clone());
                self.last = Some(printed);
            }
            ["curl", args @ ..] if !background => {
                let args: Vec<String> = args.iter().map(|a| self.arg(a)).collect();
                let out = curl(&args, || self.check_jobs());
                self.outputs.push(out.clone());
                self.last = Some(out);
            }
            _ => panic!("the walk-through test does not know how to run {line:?}"),
        }
    }

    /// Starts a background job, its output (stdout and stderr) to a file of its own.
    fn spawn(&mut self, line: &str, cmd: &mut Command) {
        self.started += 1;
        let out = self.dir.join(format!("job{}.log", self.started));
        let file = File::create(&out).unwrap();
        let child = cmd
            .current_dir(ROOT)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        self.jobs.push(Job {
            line: line.to_string(),
            proc: Proc {
                child,
                name: line.to_string(),
            },
            out,
        });
    }

    /// Fails if a background job has exited (a daemon that could not start, say), with its log.
    fn check_jobs(&mut self) {
        for j in &mut self.jobs {
            if let Some(status) = j.proc.child.try_wait().unwrap() {
                panic!("{}: exited ({status:?})\n{}", j.line, log(&j.out));
            }
        }
    }

    /// Takes the background job whose line starts with `prefix` out of the job list.
    fn take(&mut self, prefix: &str) -> Job {
        let i = self
            .jobs
            .iter()
            .position(|j| j.line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no job {prefix:?}"));
        self.jobs.remove(i)
    }

    /// `kill $(jobs -p); wait`: SIGTERM to every job, then each must exit 0 (a daemon drains).
    fn stop_all(&mut self) {
        for j in &self.jobs {
            j.proc.signal("-TERM");
        }
        for mut j in self.jobs.drain(..) {
            let status = j.proc.wait_exit(LIMIT);
            assert!(status.success(), "{}: {status:?}\n{}", j.line, log(&j.out));
        }
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs curl as the user would, waiting (up to [`LIMIT`]) while nothing listens yet: a user
/// types the next line later than a test does. Its stdout. `meanwhile` runs while it waits.
fn curl(args: &[String], mut meanwhile: impl FnMut()) -> String {
    let t = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(args)
            .output()
            .expect("curl");
        // 7: could not connect.
        if out.status.code() == Some(7) && t.elapsed() < LIMIT {
            meanwhile();
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        return String::from_utf8_lossy(&out.stdout).into_owned();
    }
}

/// GETs from `addr` until an answer's `x-worker` header is one `is_it` takes (the `kind` of echo
/// server: a Rust one says `PID/THREAD`, a Python one `python/PID`): every answer on the way
/// must be 200 and the request echoed back.
fn until_echoed_by(addr: std::net::SocketAddr, kind: &str, is_it: impl Fn(&str) -> bool) {
    let mut k = 0;
    wait_until(&format!("an answer from the {kind} echo server"), || {
        k += 1;
        let path = format!("/{kind}-{k}");
        let mut s = connect(addr);
        let (status, head, body) = http(&mut s, &get(&path)).expect("connection closed");
        assert_eq!(status, 200, "{path}: {head}\n{body}");
        assert!(
            body.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{path}: {body}"
        );
        head.lines()
            .any(|l| l.strip_prefix("x-worker: ").is_some_and(&is_it))
    });
}

/// README.md, "Every stage its own process" and "Any language can join", from a fresh folder:
/// the daemons of examples/one-host-ipc.toml one by one (the socket folder does not exist: they
/// make it), curl; the whole topology in prime_serverd; then a Python stage beside it, the Python
/// client of the zmq front, and curl until the Python worker answers. Every daemon exits 0.
#[test]
fn the_readme_daemon_walk_through_works_on_a_fresh_machine() {
    let mut w = Walk::new("readme-walk");
    w.run(&block("README.md", "## Every stage its own process", "sh"));
    assert!(w.ipc.is_dir(), "the daemons made the socket folder");
    let front = format!("127.0.0.1:{}", w.port(8002)).parse().unwrap();
    w.run_with(
        &block("README.md", "## Any language can join", "sh"),
        |_, line| {
            if line.starts_with("kill") {
                // `curl -i` a few times: the Python worker answers some (x-worker: python).
                let mut k = 0;
                wait_until("an answer from the Python stage", || {
                    k += 1;
                    let n = 32416190071u64 + 2 * k;
                    let mut s = connect(front);
                    let path = format!("/is_prime?possible_prime={n}");
                    let (status, head, body) = http(&mut s, &get(&path)).expect("closed");
                    assert_eq!(status, 200, "{path}: {body}");
                    assert!(
                        body.starts_with(&format!("{{\"possible_prime\":{n},")),
                        "{body}"
                    );
                    head.contains("x-worker: python")
                });
            }
        },
    );
}

/// README.md's first block, "The demo: is this number prime?": every server line as the user
/// runs it one after the other (each stopping the one before), every curl with the output the
/// README shows, the netstring line through Debian's nc; every server exits 0 at the end.
#[test]
fn the_readme_demo_block_works_as_shown() {
    let mut w = Walk::new("readme-demo");
    w.run(&block(
        "README.md",
        "## The demo: is this number prime?",
        "sh",
    ));
    let answers = std::mem::take(&mut w.outputs);
    // curl -d 15: the POST's answer; curl -i …abc: a 400 with a body saying what works; nc: the
    // netstring answer.
    assert!(
        answers
            .iter()
            .any(|a| a.trim() == r#"{"possible_prime":15,"is_prime":false}"#),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|a| a.starts_with("HTTP/1.1 400")),
        "{answers:?}"
    );
    assert_eq!(
        answers.last().map(String::as_str),
        Some(r#"46:{"possible_prime":32416190071,"is_prime":true},"#),
        "{answers:?}"
    );
    w.stop_all();
}

/// examples/broker/README.md, every step, with real processes: the broker, the front, a Rust and
/// a Python echo server; curl until both servers answered HTTP (each answer the request echoed);
/// the Rust and Python clients; then (1) a server killed, (2) the other one too, (3) one started,
/// (4) the broker killed while it holds the clients' strings (the one worker busy with a slow
/// request) and started again. After each step the clients carry on (the front's replies grow);
/// stopped, each reports every string back as its own and no error, and every daemon exits 0.
#[test]
fn the_broker_demo_walk_through_works_step_by_step() {
    const DEMO: &str = "examples/broker/README.md";
    let mut w = Walk::new("broker-walk");
    w.run(&block(DEMO, "# Many clients", "sh"));
    let front: std::net::SocketAddr = format!("127.0.0.1:{}", w.port(8002)).parse().unwrap();
    let front_s = front.to_string();
    // HTTP, answered by each kind of server (the Python one answered 502 before).
    until_echoed_by(front, "Python", |w| w.starts_with("python/"));
    until_echoed_by(front, "Rust", |w| !w.starts_with("python/"));
    let replied = || value(&front_s, "prime_server_front_replied_total", &[]);
    // The clients carry on: the front's replies grow by a few hundred.
    let carry_on = |what: &str| {
        let from = replied();
        wait_until(&format!("the clients carry on after {what}"), || {
            replied() >= from + 200.0
        });
    };
    carry_on("starting");

    // 1. Kill a server.
    let rust_server = w.take("prime_workerd");
    rust_server.proc.signal("-KILL");
    carry_on("a server killed");
    // 2. Kill them all.
    let py_server = w.take("python3 examples/broker/echo_worker.py");
    py_server.proc.signal("-KILL");
    // 3. Start one.
    w.line(&inline_command(DEMO, "3. **Start one**"));
    carry_on("a server started");

    // 4. Kill the broker and restart it, while it holds the clients' strings: the one worker is
    // busy with a slow request, so theirs wait in the broker's queue.
    let slow = std::thread::spawn(move || {
        let mut s = connect(front);
        http(&mut s, &get("/slow?sleep=3000"))
    });
    let in_flight = || value(&front_s, "prime_server_front_in_flight", &[]);
    let mut last = replied();
    wait_until(
        "the slow request in the worker, the clients' strings queued",
        || {
            let now = replied();
            let still = now == last;
            last = now;
            still && in_flight() >= 3.0
        },
    );
    let mut broker = w.take("prime_proxyd");
    broker.proc.signal("-KILL");
    broker.proc.wait_exit(LIMIT);
    w.line(&inline_command(
        DEMO,
        "4. **Kill the broker and restart it**",
    ));
    carry_on("the broker restarted");
    let slow = slow.join().unwrap().expect("the slow request was answered");
    assert!(matches!(slow.0, 200 | 503), "{slow:?}");

    // The clients, stopped: every string came back as their own, none ended in an error.
    let mut again = 0;
    for prefix in [
        "prime_echo_client",
        "python3 examples/broker/echo_client.py",
    ] {
        let mut client = w.take(prefix);
        client.proc.signal("-TERM");
        let status = client.proc.wait_exit(LIMIT);
        let out = log(&client.out);
        assert!(status.success(), "{prefix}: {status:?}\n{out}");
        let report = out
            .lines()
            .find(|l| l.contains("client: sent "))
            .unwrap_or_else(|| panic!("{prefix}: no report in {out}"));
        assert!(report.contains("someone else's 0, errors 0"), "{report}");
        let sent: u64 = report
            .split("sent ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{report}"));
        assert!(sent > 0, "{report}");
        again += report
            .rsplit(": ")
            .next()
            .and_then(|s| s.trim_end_matches(')').parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{report}"));
    }
    // The broker died holding strings: they were sent again, not lost.
    assert!(
        again >= 1,
        "no string was sent again after the broker's death"
    );
    drop((rust_server, py_server));
    w.stop_all();
}

/// README.md's "Using the library" shows crates/prime_server/examples/my_service.rs verbatim,
/// and that example (built by `cargo test --workspace`, as every example) serves: it logs its
/// listening line, answers, and stops on SIGTERM with exit 0.
#[test]
fn the_readme_library_example_is_the_example_file_and_it_serves() {
    let file = read("crates/prime_server/examples/my_service.rs");
    let shown = block("README.md", "## Using the library", "rust");
    assert_eq!(
        shown, file,
        "README.md shows examples/my_service.rs as it is"
    );
    let exe = bin("examples").join("my_service");
    assert!(
        exe.is_file(),
        "{} is built by `cargo test --workspace` (or `cargo build -p prime_server --example my_service`)",
        exe.display()
    );
    let port = free_port();
    let mut p = Proc {
        child: Command::new(&exe)
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        name: "my_service".into(),
    };
    let mut lines = BufReader::new(p.child.stdout.take().unwrap()).lines();
    let line = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("listening on")))
        .expect("a listening line")
        .unwrap();
    assert!(
        line.ends_with(&format!("listening on 127.0.0.1:{port}")),
        "{line}"
    );
    std::thread::spawn(move || for _ in lines {});
    let got = curl(&[format!("http://127.0.0.1:{port}/?q=hello")], || {});
    assert_eq!(got, "hello\n");
    let mut s = connect(format!("127.0.0.1:{port}").parse().unwrap());
    let (status, _, body) = http(&mut s, &get("/")).unwrap();
    assert_eq!((status, body.as_str()), (400, "missing ?q=\n"));
    p.stop();
}

/// examples/one-host-ipc.toml explains every key above it, sets or shows (commented out) every
/// key a topology takes, and what it shows commented out is valid once uncommented.
#[test]
fn the_one_host_example_topology_is_commented_key_by_key() {
    let text = read("examples/one-host-ipc.toml");
    // A key line (`key = value`) or a section header (`[name]`, `[[name]]`), set or shown
    // commented out (`# `).
    let is_key = |l: &str| {
        let l = l.strip_prefix("# ").unwrap_or(l);
        let name = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let header = l.trim_start_matches('[').trim_end_matches(']');
        (l.starts_with('[') && l.ends_with(']') && name(header))
            || l.split_once(" = ").is_some_and(|(k, _)| name(k))
    };
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if is_key(l) {
            let above = lines[..i].last().copied().unwrap_or("");
            assert!(
                above.starts_with('#') && !is_key(above),
                "line {}: {l:?} has no comment above it",
                i + 1
            );
        }
    }
    // Uncommented, every key shown is valid together.
    let all: String = lines
        .iter()
        .map(|l| match l.strip_prefix("# ") {
            Some(k) if is_key(l) => format!("{k}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let full = prime_server::topology::Topology::parse(&all)
        .unwrap_or_else(|e| panic!("uncommented: {e}\n{all}"));
    assert!(full.security.is_some());
    // Every key each section takes is in the file: an unknown key's error lists them.
    let keys_of = |section: &str| -> Vec<String> {
        // An unknown key at the top (section "") or first in the section.
        let probe: String = match section {
            "" => format!("zz_unknown = 1\n{all}"),
            _ => all.replacen(
                &format!("\n{section}\n"),
                &format!("\n{section}\nzz_unknown = 1\n"),
                1,
            ),
        };
        let err = prime_server::topology::Topology::parse(&probe)
            .err()
            .unwrap_or_else(|| panic!("zz_unknown accepted in {section}"))
            .to_string();
        let listed = err
            .split("expected one of")
            .nth(1)
            .or_else(|| err.split("expected").nth(1))
            .unwrap_or_else(|| panic!("{err}"));
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    for section in ["", "[heartbeat]", "[[server]]", "[[stage]]", "[security]"] {
        let keys = keys_of(section);
        assert!(!keys.is_empty(), "{section}");
        for key in keys {
            let shown = lines.iter().any(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                l.starts_with(&format!("{key} = "))
                    || l.starts_with(&format!("[{key}]"))
                    || l.starts_with(&format!("[[{key}]]"))
            });
            assert!(
                shown,
                "examples/one-host-ipc.toml does not show {key} ({section})"
            );
        }
    }
}
