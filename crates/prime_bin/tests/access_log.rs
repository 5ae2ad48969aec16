//! A daemon's access log under `--log-format json`: one JSON line per request that entered, with
//! every field, whether it was answered, refused before its body was read (413), or abandoned by
//! its client before the answer (499); and the start-up lines in the log too.

mod common;
use common::{connect, free_port, temp_dir, wait_until, Proc};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Every line of the log, parsed: a line that is not a JSON object fails the test.
fn json_lines(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        // A line still being written is complete only once it ends with its newline.
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn access_lines(log: &Path) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .filter(|l| l["target"] == "access")
        .collect()
}

/// The fields of the one access line of the request known as `id`, once it is written.
fn access_line(log: &Path, id: &str) -> Value {
    let of = |log: &Path| -> Vec<Value> {
        access_lines(log)
            .into_iter()
            .filter(|l| l["fields"]["request_id"] == id)
            .collect()
    };
    wait_until(&format!("an access line for {id}"), || !of(log).is_empty());
    let lines = of(log);
    assert_eq!(lines.len(), 1, "one line for {id}: {lines:?}");
    lines[0]["fields"].clone()
}

#[test]
fn the_json_access_log_has_one_line_per_request_answered_refused_or_abandoned() {
    let dir = temp_dir("access-log");
    let log = dir.join("echod.log");
    let mut echod = Proc::start_logging(
        "prime_echod",
        &[
            &format!("127.0.0.1:{}", free_port()),
            "2",
            "0",
            "--access-log",
            "--log-format",
            "json",
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let addr = echod.listening();
    // What it printed on stdout at start is in the log too.
    wait_until("a `front listening` line in the log", || {
        json_lines(&log).iter().any(|l| {
            l["fields"]["message"] == "front listening"
                && l["fields"]["addr"] == addr.to_string().as_str()
        })
    });

    // Answered, by a real client: every field.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-A",
            "access-test/1.0",
        ])
        .args(["-H", "X-Request-Id: d-ok"])
        .arg(format!("http://{addr}/q/r?a=1&b=two%20words"))
        .output()
        .expect("curl is required for this test (apt-get install curl)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let f = access_line(&log, "d-ok");
    assert_eq!(f["method"], "GET", "{f}");
    assert_eq!(f["path"], "/q/r?a=1&b=two%20words", "{f}");
    assert_eq!(f["status"], 200, "{f}");
    assert!(f["bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(f["us"].as_u64().is_some(), "{f}");
    assert_eq!(f["user_agent"], "access-test/1.0", "{f}");
    assert!(f["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{f}");
    assert!(f["id"].as_u64().unwrap() > 0, "{f}");

    // Refused before its body was read (over prime_echod's 10 MiB): its real id, and the
    // X-Request-Id made from it.
    let mut s = connect(addr);
    s.write_all(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 20000000\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let made = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("an x-request-id")
        .to_string();
    let f = access_line(&log, &made);
    assert_eq!(f["status"], 413, "{f}");
    assert_eq!(f["user_agent"], "-", "{f}");
    let id = f["id"].as_u64().unwrap();
    assert!(id > 0, "{f}");
    assert!(
        made.ends_with(&format!("-{id:x}")),
        "{made} names request {id}"
    );

    // Abandoned: the client waits for `100 Continue` (so the request has entered and its body is
    // being read), sends its body and goes away while the echo sleeps.
    let mut s = connect(addr);
    s.write_all(
        b"POST /slow?sleep=60000 HTTP/1.1\r\nHost: t\r\nX-Request-Id: d-gone\r\n\
          Content-Length: 1\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            common::read_some(&mut s, &mut b).unwrap(),
            1,
            "closed before 100 Continue"
        );
        got.push(b[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"x").unwrap();
    drop(s);
    let f = access_line(&log, "d-gone");
    assert_eq!(f["status"], 499, "{f}");
    assert_eq!(f["bytes"], 0, "{f}");
    assert_eq!(f["method"], "POST", "{f}");
    assert_eq!(f["path"], "/slow?sleep=60000", "{f}");
    assert!(f["us"].as_u64().is_some(), "{f}");

    echod.stop();
    // Nothing more: three requests, three lines.
    let all = access_lines(&log);
    assert_eq!(all.len(), 3, "{all:?}");
    let _ = std::fs::remove_dir_all(dir);
}
