//! One rule for the daemons' command lines and the topology file: **a flag given on the command
//! line overrides the file's value; a flag not given keeps it.** Without a file, the daemon's
//! own defaults (and its C++ positional arguments) stand where the file's values would, and a
//! named flag overrides the positional argument of the same meaning.
//!
//! Every flag that sets a value of the file is an `Option`, `None` when it was not given, so no
//! default of the command line can pass for a value given. The flags a kind of daemon shares are
//! one clap struct, flattened into each daemon's arguments (`#[command(flatten)]`) and applied to
//! the section the daemon runs by one function: [`FrontFlags`] for the front servers
//! (`prime_serverd`, `prime_httpd`, `prime_echod`, `prime_filed`), [`ProxyFlags`] for a stage's
//! proxy; a daemon's own flags go through [`given`], the same rule for one value.
//!
//! ```
//! use clap::Parser;
//! use prime_bin::flags::FrontFlags;
//! use prime_server::topology::ServerSection;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     front: FrontFlags,
//! }
//! let args = Args::parse_from(["daemon", "--timeout", "2"]);
//! let mut section = ServerSection::new("127.0.0.1:8002", "-", "-");
//! section.max_body_bytes = 100; // as if from the file
//! args.front.apply(&mut section).unwrap();
//! assert_eq!(section.timeout_seconds, 2); // given: the flag's
//! assert_eq!(section.max_body_bytes, 100); // not given: the file's
//! ```

use clap::Args;
use prime_server::topology::{Protocol, ServerSection, StageSection};

/// The rule, as every daemon's `--help` ends with it.
pub const RULE: &str = "\
Flags and the topology file (--config): a flag given on the command line overrides the file's \
value (in the [[server]] or [[stage]] this daemon runs, or the file's top level); a flag not \
given keeps the file's value. Without --config, the defaults shown stand in for the file's \
values, and a named flag overrides the C++ positional argument of the same meaning. \
Positional arguments and --config do not mix.";

/// Sets `value` to the flag's if the flag was given; leaves it alone if not.
pub fn given<T>(value: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *value = v;
    }
}

/// Parses a count that must be at least 1 (`--max-in-flight`, `--queue-limit`, …).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a count of at least 1, got {s:?}")),
    }
}

/// Parses a number of seconds that must be at least 1.
pub fn seconds_at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected whole seconds, at least 1, got {s:?}")),
    }
}

/// Parses a client protocol: `http` or `netstring`.
pub fn protocol_arg(s: &str) -> Result<Protocol, String> {
    match s {
        "http" => Ok(Protocol::Http),
        "netstring" => Ok(Protocol::Netstring),
        other => Err(format!("expected http or netstring, got {other:?}")),
    }
}

/// Parses a yes-or-no value, in any case: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
pub fn bool_arg(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "expected true/false, 1/0, yes/no or on/off, got {s:?}"
        )),
    }
}

/// The C++ `prime_httpd`'s ENABLE_LOGGING argument: logging is off only for `false`, in any
/// case (and here for `0`, `no` and `off` too); any other value turns it on, as in the C++.
/// Returns whether it is on, and a warning to log when the value was none of the words of
/// [`bool_arg`] (likely a typo, taken as on).
pub fn cxx_enable_logging(s: &str) -> (bool, Option<String>) {
    match bool_arg(s) {
        Ok(on) => (on, None),
        Err(_) => (
            true,
            Some(format!(
                "ENABLE_LOGGING {s:?} is none of true/false, 1/0, yes/no, on/off: the access \
                 log is on (as the C++ prime_httpd takes any value but false)"
            )),
        ),
    }
}

/// The settings of a front server that a flag may give: the keys of a `[[server]]` section.
/// The fronts of every daemon take the same flags.
#[derive(Args, Debug, Clone, Default)]
pub struct FrontFlags {
    /// Where clients connect: tcp://*:8002, tcp://127.0.0.1:8002 or HOST:PORT [file: `listen`].
    #[arg(long = "listen", id = "listen_flag", value_name = "ENDPOINT")]
    pub listen: Option<String>,
    /// The client protocol: `http` or `netstring` [file: `protocol`; default http].
    #[arg(long, value_name = "PROTOCOL", value_parser = protocol_arg)]
    pub protocol: Option<Protocol>,
    /// Seconds before a request is answered 504 and its workers are interrupted; 0 = no limit
    /// [file: `timeout_seconds`; default 60].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// The largest request body in bytes; larger ones are answered 413 [file: `max_body_bytes`;
    /// default 10485760 (prime_filed: 65536)].
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// Seconds a client may take to send a request head; also closes idle keep-alive
    /// connections [file: `header_timeout_seconds`; default 30].
    #[arg(long, value_name = "SECONDS", value_parser = seconds_at_least_one)]
    pub header_timeout: Option<u64>,
    /// The most requests in flight; more are answered 503 at once [file: `max_in_flight`;
    /// default 10000].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub max_in_flight: Option<usize>,
    /// Client connections served at once; one beyond is answered 503 (netstring: `ERROR 503`)
    /// and closed [file: `max_connections`; default: the open-file limit, raised to its hard
    /// limit at start, less a reserve for zmq].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub max_connections: Option<usize>,
    /// A path (netstring: a payload) answered by the server itself: 200 `OK`, or 503 while
    /// draining [file: `health_path`; default none].
    #[arg(long = "health-path", id = "health_path_flag", value_name = "PATH")]
    pub health_path: Option<String>,
    /// One access-log line per request (id, method, path, status, bytes, µs) at target
    /// `access`; `--access-log=false` turns off a file's `access_log = true` [file:
    /// `access_log`; default off].
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = bool_arg
    )]
    pub access_log: Option<bool>,
    /// Also serve zmq clients (REQ/DEALER) on a ROUTER bound here (tcp:// or ipc://) [file:
    /// `zmq_listen`; default none].
    #[arg(long, value_name = "ENDPOINT")]
    pub zmq_listen: Option<String>,
    /// Also serve Prometheus metrics at http://ADDR/metrics [file: `metrics_listen`; default
    /// none]. `prime_serverd --config`: the process's one listener, in place of every
    /// `[[server]]`'s.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Serve HTTPS: the certificate chain (PEM, leaf first). HTTP/2 or HTTP/1.1 by ALPN; needs
    /// --tls-key. Both files are re-read on SIGHUP (a bad new pair is logged and the one in
    /// force kept) [file: `tls_cert`, relative to the file; default none: cleartext HTTP/1.1
    /// and h2c].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1) [file: `tls_key`].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl FrontFlags {
    /// Applies the flags given to the front server `s` (from the file, or the daemon's defaults
    /// and positional arguments); the rest of `s` stays as it is. Fails on a value that the
    /// file would be refused for.
    pub fn apply(&self, s: &mut ServerSection) -> anyhow::Result<()> {
        given(&mut s.listen, self.listen.clone());
        given(&mut s.protocol, self.protocol);
        given(&mut s.timeout_seconds, self.timeout);
        given(&mut s.max_body_bytes, self.max_body);
        given(&mut s.header_timeout_seconds, self.header_timeout);
        given(&mut s.max_in_flight, self.max_in_flight);
        given(&mut s.max_connections, self.max_connections.map(Some));
        given(&mut s.health_path, self.health_path.clone().map(Some));
        given(&mut s.access_log, self.access_log);
        given(&mut s.zmq_listen, self.zmq_listen.clone().map(Some));
        given(&mut s.metrics_listen, self.metrics_listen.clone().map(Some));
        given(&mut s.tls_cert, self.tls_cert.clone().map(Some));
        given(&mut s.tls_key, self.tls_key.clone().map(Some));
        prime_server::protocol::listen_addrs(&s.listen).map_err(anyhow::Error::msg)?;
        s.tls_files().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// Applies the flags given to every front server of a process (`prime_serverd --config`
    /// runs all the file's). A flag that names one address (`--listen`, `--zmq-listen`) cannot
    /// serve several fronts and is refused then; `--metrics-listen` becomes the process's one
    /// metrics listener (each listener serves the whole process).
    pub fn apply_all(&self, servers: &mut [ServerSection]) -> anyhow::Result<()> {
        if servers.len() > 1 {
            for (flag, value) in [
                ("--listen", &self.listen),
                ("--zmq-listen", &self.zmq_listen),
            ] {
                if value.is_some() {
                    anyhow::bail!(
                        "{flag} names one address, and the file has {} [[server]] sections: set \
                         it in the file",
                        servers.len()
                    );
                }
            }
        }
        for (i, s) in servers.iter_mut().enumerate() {
            self.apply(s)?;
            if i > 0 && self.metrics_listen.is_some() {
                s.metrics_listen = None;
            }
        }
        Ok(())
    }
}

/// The settings of a stage's proxy that a flag may give: keys of a `[[stage]]` section.
#[derive(Args, Debug, Clone, Default)]
pub struct ProxyFlags {
    /// Jobs waiting for a worker; more are answered 503 at once [file: `queue_limit`; default
    /// 4096].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub queue_limit: Option<usize>,
    /// Bytes of payload the waiting jobs may hold together; beyond, 503 [file:
    /// `queue_limit_bytes`; default 268435456].
    #[arg(long, value_name = "BYTES", value_parser = at_least_one)]
    pub queue_limit_bytes: Option<usize>,
    /// How many workers may be handed one job when the ones holding it die [file:
    /// `max_attempts`; default 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub max_attempts: Option<u8>,
    /// Where the front or the previous stage's workers send jobs (bound) [file: `upstream`].
    #[arg(long = "upstream", id = "upstream_flag", value_name = "ENDPOINT")]
    pub upstream: Option<String>,
    /// Where this stage's workers connect (bound) [file: `downstream`].
    #[arg(long = "downstream", id = "downstream_flag", value_name = "ENDPOINT")]
    pub downstream: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [file: `proxy_metrics_listen`; default
    /// none].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

impl ProxyFlags {
    /// Applies the flags given to the stage `s` whose proxy this process runs.
    pub fn apply(&self, s: &mut StageSection) {
        given(&mut s.queue_limit, self.queue_limit);
        given(&mut s.queue_limit_bytes, self.queue_limit_bytes);
        given(&mut s.max_attempts, self.max_attempts);
        given(&mut s.upstream, self.upstream.clone());
        given(&mut s.downstream, self.downstream.clone());
        given(
            &mut s.proxy_metrics_listen,
            self.metrics_listen.clone().map(Some),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Front {
        #[command(flatten)]
        front: FrontFlags,
    }

    fn section() -> ServerSection {
        let mut s = ServerSection::new("127.0.0.1:8002", "ipc:///l", "ipc:///i");
        s.timeout_seconds = 7;
        s.max_body_bytes = 100;
        s.health_path = Some("/file".into());
        s.access_log = true;
        s
    }

    #[test]
    fn a_flag_given_overrides_the_file_and_one_not_given_keeps_it() {
        let mut s = section();
        let args = Front::parse_from(["d", "--timeout", "2", "--health-path", "/flag"]);
        args.front.apply(&mut s).unwrap();
        assert_eq!(s.timeout_seconds, 2);
        assert_eq!(s.health_path.as_deref(), Some("/flag"));
        assert_eq!(s.max_body_bytes, 100);
        assert!(s.access_log);
        // Nothing given: the file's values, all of them.
        let mut s = section();
        Front::parse_from(["d"]).front.apply(&mut s).unwrap();
        assert_eq!(format!("{s:?}"), format!("{:?}", section()));
    }

    #[test]
    fn tls_flags_override_the_file_s_files_and_must_come_in_pairs() {
        let mut s = section();
        s.tls_cert = Some("/file/cert.pem".into());
        s.tls_key = Some("/file/key.pem".into());
        let args = Front::parse_from(["d", "--tls-cert", "flag.pem"]);
        args.front.apply(&mut s).unwrap();
        assert_eq!(s.tls_cert, Some("flag.pem".into()));
        assert_eq!(s.tls_key, Some("/file/key.pem".into()));
        // Without the file's key, a certificate alone is refused.
        let mut s = section();
        let e = Front::parse_from(["d", "--tls-cert", "c.pem"])
            .front
            .apply(&mut s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key"), "{e}");
        let args = Front::parse_from(["d", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        args.front.apply(&mut s).unwrap();
        assert_eq!(s.tls_key, Some("k.pem".into()));
    }

    #[test]
    fn access_log_takes_an_optional_value_that_can_turn_the_file_s_off() {
        for (argv, expected) in [
            (&["d", "--access-log"][..], true),
            (&["d", "--access-log=false"][..], false),
            (&["d", "--access-log=OFF"][..], false),
            (&["d", "--access-log=1"][..], true),
        ] {
            let mut s = section();
            s.access_log = !expected;
            Front::parse_from(argv).front.apply(&mut s).unwrap();
            assert_eq!(s.access_log, expected, "{argv:?}");
        }
        // The value needs `=`: a positional argument after the flag stays positional.
        assert!(Front::try_parse_from(["d", "--access-log", "false"]).is_err());
    }

    #[test]
    fn address_flags_refuse_a_file_of_several_fronts_and_metrics_become_one_listener() {
        let mut two = vec![section(), section()];
        let args = Front::parse_from(["d", "--listen", "127.0.0.1:1"]);
        assert!(args.front.apply_all(&mut two).is_err());
        let args = Front::parse_from(["d", "--metrics-listen", "127.0.0.1:9", "--timeout", "3"]);
        args.front.apply_all(&mut two).unwrap();
        assert_eq!(two[0].metrics_listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(two[1].metrics_listen, None);
        assert!(two.iter().all(|s| s.timeout_seconds == 3));
    }

    #[test]
    fn enable_logging_is_off_only_for_the_words_that_say_so() {
        for off in ["false", "FALSE", "False", "0", "no", "NO", "off", "Off"] {
            assert_eq!(cxx_enable_logging(off), (false, None), "{off}");
        }
        for on in ["true", "TRUE", "1", "yes", "On"] {
            assert_eq!(cxx_enable_logging(on), (true, None), "{on}");
        }
        let (on, warning) = cxx_enable_logging("verbose");
        assert!(on && warning.is_some());
    }
}

/// The drain and shutdown flags every daemon takes (beside its positional DRAIN_SECONDS, which
/// `--drain-seconds` overrides): applied over the file's `drain_seconds`/`shutdown_seconds` (or
/// the defaults, 28 and 1) by [`GraceFlags::grace`].
#[derive(Args, Debug, Clone, Default)]
pub struct GraceFlags {
    /// Named form of DRAIN_SECONDS: seconds to keep accepting and serving after SIGTERM/SIGINT
    /// while health checks answer 503, or DRAIN,SHUTDOWN (the C++ form, e.g. 10,5) [file:
    /// `drain_seconds`, `shutdown_seconds`; default 28,1].
    #[arg(long = "drain-seconds", value_name = "SECONDS", value_parser = crate::daemon::drain_arg)]
    pub drain_flag: Option<crate::daemon::DrainArg>,
    /// After the drain: seconds given to what is in flight, accepting nothing new, before the
    /// rest is answered 503 and the process exits [file: `shutdown_seconds`; default 1].
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_seconds: Option<u64>,
}

impl GraceFlags {
    /// `base` (the file's times, or the defaults) with the positional DRAIN_SECONDS over it, and
    /// these flags over both.
    pub fn grace(
        &self,
        base: prime_server::shutdown::Grace,
        positional: Option<crate::daemon::DrainArg>,
    ) -> prime_server::shutdown::Grace {
        crate::daemon::grace(base, self.drain_flag.or(positional), self.shutdown_seconds)
    }
}
