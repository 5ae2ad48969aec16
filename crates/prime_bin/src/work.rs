//! The work functions the daemons know by name (`prime_workerd --work NAME`, `work = "NAME"` in a
//! topology file).

use crate::{files, prime};
use prime_server::http_job::{Request, Response};
use prime_server::{ClientProtocol, Interrupt, Job, Outcome, WorkError, WorkFn};
use std::path::PathBuf;
use std::sync::Arc;

/// Makes one work function per worker thread.
pub type Factory = Arc<dyn Fn() -> WorkFn + Send + Sync>;

/// The names [`factory`] knows.
pub const KINDS: &[&str] = &["prime_parse", "prime_test", "echo", "files"];

/// What the `files` kind serves; the other kinds ignore it.
#[derive(Debug, Clone, Default)]
pub struct FilesOptions {
    /// The directory served (default: the current directory).
    pub root: Option<PathBuf>,
    /// Serve and list hidden files and folders (a name starting with `.`) too; by default a
    /// request for one answers 404.
    pub allow_hidden: bool,
}

/// The work function called `name`; `files` says what the `files` kind serves.
pub fn factory(name: &str, files: FilesOptions) -> anyhow::Result<Factory> {
    Ok(match name {
        "prime_parse" => Arc::new(|| Box::new(prime::parse_stage)),
        "prime_test" => Arc::new(|| Box::new(prime::test_stage)),
        "echo" => Arc::new(|| Box::new(echo)),
        "files" => {
            let root = files::Root::new(&files.root.unwrap_or_else(|| PathBuf::from(".")))?
                .allow_hidden(files.allow_hidden);
            Arc::new(move || {
                let root = root.clone();
                Box::new(move |job: &mut Job, _: &Interrupt<'_>| {
                    if job.protocol() != ClientProtocol::Http {
                        return Err(WorkError::Failed {
                            status: 400,
                            reason: "the files service answers HTTP requests only".into(),
                        });
                    }
                    let req = Request::decode(&job.frames).map_err(|e| WorkError::Failed {
                        status: 400,
                        reason: e.to_string(),
                    })?;
                    Ok(Outcome::Reply(root.respond(&req).encode()))
                })
            })
        }
        other => anyhow::bail!("unknown work {other:?}; known: {}", KINDS.join(", ")),
    })
}

/// Echo: answers an HTTP request with 200 and the request as the worker saw it (request line,
/// headers, blank line, body), and a request of any other client protocol (netstring, zmq) with
/// its payload frames, joined; the job's header says which ([`Job::protocol`]). The `x-worker` header
/// names the process and thread that answered, `x-attempt` how many workers the proxy has handed
/// the job to (2 and up: a worker died holding it). `?sleep=MS` makes it work that long first
/// (interruptibly), to stand in for expensive requests in tests and demos.
pub fn echo(job: &mut Job, interrupt: &Interrupt<'_>) -> Result<Outcome, WorkError> {
    if job.protocol() != ClientProtocol::Http {
        return Ok(Outcome::Reply(job.frames.concat()));
    }
    let req = Request::decode(&job.frames).map_err(|e| WorkError::Failed {
        status: 400,
        reason: e.to_string(),
    })?;
    if let Some(ms) = req.query_value("sleep").and_then(|v| v.parse::<u64>().ok()) {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms.min(600_000));
        while std::time::Instant::now() < until {
            interrupt.check()?;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let version = match req.version {
        prime_server::http_job::Version::Http10 => "HTTP/1.0",
        prime_server::http_job::Version::Http11 => "HTTP/1.1",
    };
    let mut body = format!("{} {} {version}\r\n", req.method, req.target).into_bytes();
    for (n, v) in &req.headers {
        body.extend_from_slice(n.as_bytes());
        body.extend_from_slice(b": ");
        body.extend_from_slice(v);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(&req.body);
    let worker = format!(
        "{}/{}",
        std::process::id(),
        std::thread::current().name().unwrap_or("worker")
    );
    Ok(Outcome::Reply(
        Response::new(200)
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-worker", worker)
            .header("x-attempt", job.attempt().to_string())
            .body(body)
            .encode(),
    ))
}
