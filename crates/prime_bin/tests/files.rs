//! Static files served by real daemons: `prime_filed`, and the `files` work in a `prime_workerd`
//! behind a `prime_httpd`.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A root holding a normal file, hidden files and folders at several depths (issue 11: a
/// checkout's `.git/config` or a `.env` beside the site was served to anyone asking).
fn root_with_hidden_files() -> PathBuf {
    let root = temp_dir("hidden");
    std::fs::write(root.join("index.txt"), "public").unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), "[remote] token").unwrap();
    std::fs::write(root.join(".env"), "PASSWORD=x").unwrap();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/.secret"), "s").unwrap();
    std::fs::write(root.join("a/b.txt"), "b").unwrap();
    root
}

/// The hidden files, as a client may spell them: plainly, percent-encoded, or with a `.`
/// segment in front.
const HIDDEN: &[&str] = &[
    "/.git/config",
    "/.env",
    "/a/.secret",
    "/%2egit/config",
    "/%2Eenv",
    "/a/%2esecret",
    "/./.env",
    "/a/b/../.secret",
];

/// Asks `addr` for the normal and the hidden files: each hidden one answers 404 (as a missing
/// file would, so nothing says it exists) and is left out of listings, unless `allowed`.
fn check_hidden(addr: SocketAddr, allowed: bool) {
    let mut s = connect(addr);
    let (status, _, body) = http(&mut s, &get("/index.txt")).unwrap();
    assert_eq!((status, body.as_str()), (200, "public"));
    let (status, _, body) = http(&mut s, &get("/a/b.txt")).unwrap();
    assert_eq!((status, body.as_str()), (200, "b"));
    for path in HIDDEN {
        // `/a/b/../.secret` goes through a folder that does not exist: 404 either way.
        let want = if allowed && !path.contains("/b/") {
            200
        } else {
            404
        };
        let (status, _, body) = http(&mut s, &get(path)).unwrap();
        assert_eq!(status, want, "GET {path}: {body}");
        let head = head_request(&mut s, path);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want}")),
            "HEAD {path}: {head}"
        );
    }
    // A hidden folder: neither listed nor redirected to its listing.
    for path in ["/.git/", "/.git", "/%2egit/"] {
        let (status, _, body) = http(&mut s, &get(path)).unwrap();
        if allowed {
            assert!(
                status == 200 || status == 301,
                "GET {path}: {status} {body}"
            );
        } else {
            assert_eq!(status, 404, "GET {path}: {body}");
        }
    }
    let listings: [(&str, &str, &[&str]); 2] = [
        ("/", "index.txt", &[".git/", ".env"]),
        ("/a/", "b.txt", &[".secret"]),
    ];
    for (dir, shown, hidden) in listings {
        let (status, _, body) = http(&mut s, &get(dir)).unwrap();
        assert_eq!(status, 200, "{dir}");
        assert!(body.contains(shown), "{dir}: {body}");
        for h in hidden {
            assert_eq!(body.contains(h), allowed, "{dir} listing and {h}: {body}");
        }
    }
}

fn filed(root: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec![listen.as_str(), root.to_str().unwrap(), "1"];
    args.extend_from_slice(extra);
    let mut p = Proc::start("prime_filed", &args);
    let addr = p.listening();
    (p, addr)
}

#[test]
fn filed_answers_404_for_hidden_files_unless_allowed() {
    let root = root_with_hidden_files();
    let (p, addr) = filed(&root, &[]);
    check_hidden(addr, false);
    p.stop();
    let (p, addr) = filed(&root, &["--allow-hidden"]);
    check_hidden(addr, true);
    p.stop();
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn workerd_files_answers_404_for_hidden_files_unless_allowed() {
    let root = root_with_hidden_files();
    let dir = temp_dir("hidden-stack");
    let cfg = echo_topology(&dir, 1, 30);
    let cfg = cfg.to_str().unwrap();
    let root_arg = root.to_str().unwrap();
    let proxy = proxy(cfg);
    let (front, addr) = front(cfg, "s0");
    for allowed in [false, true] {
        let mut args = vec![
            "--config", cfg, "--stage", "echo", "--work", "files", "--root", root_arg,
        ];
        if allowed {
            args.push("--allow-hidden");
        }
        let worker = Proc::start("prime_workerd", &args);
        check_hidden(addr, allowed);
        worker.stop();
    }
    front.stop();
    proxy.stop();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(root);
}
