//! Static files for `prime_filed` (and the `files` work kind): a root directory requests cannot
//! escape, MIME types by extension, directory listings, `ETag`/`Last-Modified` with 304, and
//! single byte-range requests (206/416). Hidden files and folders (a name starting with `.`) are
//! neither served nor listed unless allowed.

use prime_server::http_job::{Request, Response};
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The largest answer read into memory at once; larger files are served in ranges (a client
/// asking for the whole file gets 413 with a hint).
pub const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// The served directory, canonicalized.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    allow_hidden: bool,
}

impl Root {
    /// Serves `dir`, which must exist.
    pub fn new(dir: &Path) -> anyhow::Result<Root> {
        let dir = dir
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("cannot serve {}: {e}", dir.display()))?;
        anyhow::ensure!(
            dir.is_dir(),
            "cannot serve {}: not a directory",
            dir.display()
        );
        Ok(Root {
            dir,
            allow_hidden: false,
        })
    }

    /// Whether hidden files and folders are served and listed (default: not; a request for one
    /// answers 404, as for a missing file).
    pub fn allow_hidden(mut self, allow: bool) -> Root {
        self.allow_hidden = allow;
        self
    }

    /// Resolves a request path inside the root: `None` when it would leave it (`..` above the
    /// root, or a symbolic link pointing outside), names a hidden file or folder (unless
    /// allowed), or does not exist.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        if path.contains('\0') {
            return None;
        }
        let mut p = self.dir.clone();
        for c in Path::new(path).components() {
            match c {
                // A checkout's `.git/` or a `.env` beside the site is never meant for clients.
                // The path is already percent-decoded, so `%2egit` is caught here too.
                Component::Normal(part) if is_hidden(part) && !self.allow_hidden => return None,
                Component::Normal(part) => p.push(part),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        let real = p.canonicalize().ok()?;
        real.starts_with(&self.dir).then_some(real)
    }

    /// Answers a request.
    pub fn respond(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return Response::text(405, "only GET and HEAD are served\n")
                .header("allow", "GET, HEAD");
        }
        let Some(path) = self.resolve(&req.path) else {
            return Response::text(404, "Not Found\n");
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            return Response::text(404, "Not Found\n");
        };
        if meta.is_dir() {
            if !req.path.ends_with('/') {
                return Response::new(301)
                    .header(
                        "location",
                        format!("{}/", req.target.split('?').next().unwrap_or("/")),
                    )
                    .body(Vec::new());
            }
            return listing(&path, &req.path, self.allow_hidden);
        }
        if !meta.is_file() {
            return Response::text(404, "Not Found\n");
        }
        let len = meta.len();
        let mtime = meta.modified().ok();
        let etag = format!(
            "\"{:x}-{:x}\"",
            len,
            mtime
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos())
        );
        let header = |name: &str| {
            req.header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let mime = mime_guess::from_path(&path).first_or_octet_stream();
        let base = |status: u16| {
            let mut r = Response::new(status)
                .header("etag", &etag)
                .header("accept-ranges", "bytes");
            if let Some(t) = mtime {
                r = r.header("last-modified", httpdate::fmt_http_date(t));
            }
            r
        };
        if let Some(inm) = header("if-none-match") {
            if inm.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == etag
            }) {
                return base(304);
            }
        } else if let (Some(ims), Some(t)) = (header("if-modified-since"), mtime) {
            if let Ok(since) = httpdate::parse_http_date(&ims) {
                // Whole seconds: the header has no finer resolution.
                let secs = |x: std::time::SystemTime| {
                    x.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
                };
                if secs(t) <= secs(since) {
                    return base(304);
                }
            }
        }
        // A Range applies only when If-Range (if any) still names this version.
        let if_range_ok = header("if-range").is_none_or(|v| v.trim() == etag);
        let range = header("range").filter(|_| if_range_ok);
        let (status, start, end) = match range.as_deref().map(|r| parse_range(r, len)) {
            None | Some(RangeSpec::Ignore) => (200, 0, len),
            Some(RangeSpec::One(s, e)) => (206, s, e),
            Some(RangeSpec::Unsatisfiable) => {
                return Response::text(416, "range not satisfiable\n")
                    .header("content-range", format!("bytes */{len}"));
            }
        };
        if end - start > MAX_ANSWER {
            return Response::text(
                413,
                format!("the file is {len} bytes; ask for ranges of at most {MAX_ANSWER} bytes\n"),
            );
        }
        let mut r = base(status).header("content-type", mime.essence_str());
        if status == 206 {
            r = r.header("content-range", format!("bytes {start}-{}/{len}", end - 1));
        }
        if req.method == "HEAD" {
            // No body to read: the front passes a worker's content-length on for HEAD.
            return r.header("content-length", (end - start).to_string());
        }
        match read_span(&path, start, end) {
            Ok(body) => r.body(body),
            Err(e) => Response::text(500, format!("cannot read the file: {e}\n")),
        }
    }
}

fn read_span(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.take(end - start).read_to_end(&mut buf)?;
    Ok(buf)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Serve the whole file (no usable range: malformed, several ranges, another unit).
    Ignore,
    /// Bytes `[start, end)`.
    One(u64, u64),
    /// 416.
    Unsatisfiable,
}

fn parse_range(header: &str, len: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        // bytes=-N: the last N bytes.
        (None, Some(n)) if a.is_empty() => {
            if n == 0 || len == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::One(len.saturating_sub(n), len)
            }
        }
        // bytes=S-
        (Some(s), None) if b.is_empty() => {
            if s >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::One(s, len)
            }
        }
        // bytes=S-E
        (Some(s), Some(e)) if s <= e => {
            if s >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::One(s, e.min(len - 1) + 1)
            }
        }
        _ => RangeSpec::Ignore,
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A file or folder name starting with `.`.
fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn listing(dir: &Path, shown: &str, allow_hidden: bool) -> Response {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Response::text(404, "Not Found\n");
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| allow_hidden || !is_hidden(&e.file_name()))
        .map(|e| {
            let mut n = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n.push('/');
            }
            n
        })
        .collect();
    names.sort();
    let title = escape_html(shown);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if shown != "/" {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for n in names {
        let href: String = percent_encode_path(&n);
        html.push_str(&format!(
            "<li><a href=\"{href}\">{}</a></li>\n",
            escape_html(&n)
        ));
    }
    html.push_str("</ul></body></html>\n");
    Response::new(200)
        .header("content-type", "text/html; charset=utf-8")
        .body(html)
}

fn percent_encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::One(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::One(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::One(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), RangeSpec::One(0, 100));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeSpec::One(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=x-y", 100), RangeSpec::Ignore);
    }

    #[test]
    fn hidden_files_and_folders_answer_404_and_are_not_listed_unless_allowed() {
        let dir = std::env::temp_dir().join(format!("ps-files-hidden-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::create_dir_all(dir.join("a")).unwrap();
        for f in [".git/config", ".env", "a/.secret", "a/b.txt", "index.txt"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let get = |root: &Root, path: &str| {
            let r = root.respond(&Request::parse_target("GET", path));
            (r.status, String::from_utf8_lossy(&r.body).into_owned())
        };
        let hidden = [
            "/.git/config",
            "/.env",
            "/a/.secret",
            "/%2egit/config",
            "/.git/",
        ];
        let root = Root::new(&dir).unwrap();
        for path in hidden {
            assert_eq!(get(&root, path).0, 404, "{path}");
        }
        assert_eq!(get(&root, "/a/b.txt"), (200, "a/b.txt".into()));
        let (_, top) = get(&root, "/");
        assert!(top.contains("index.txt") && !top.contains(".git") && !top.contains(".env"));
        assert!(!get(&root, "/a/").1.contains(".secret"));

        let root = root.allow_hidden(true);
        for path in hidden {
            assert_eq!(get(&root, path).0, 200, "{path}");
        }
        let (_, top) = get(&root, "/");
        assert!(top.contains(".git/") && top.contains(".env"), "{top}");
        assert!(get(&root, "/a/").1.contains(".secret"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
