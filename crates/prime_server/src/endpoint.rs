//! Where a zmq socket binds or connects: `inproc://NAME` (threads of one process sharing a
//! context), `ipc:///PATH` (processes on one host) or `tcp://HOST:PORT` (processes on many
//! hosts). An [`Endpoint`] is checked once, when it is parsed; everything past that point (the
//! transport, the configs of servers, proxies and workers) takes the checked value, so no part
//! of the library looks at prefixes of strings.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The transports an endpoint can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `inproc://NAME`: threads of one process that share one zmq context.
    Inproc,
    /// `ipc:///PATH`: a Unix domain socket, processes on one host.
    Ipc,
    /// `tcp://HOST:PORT` (`*` for every interface, port `*` for one the system picks).
    Tcp,
}

impl Scheme {
    fn prefix(self) -> &'static str {
        match self {
            Scheme::Inproc => "inproc://",
            Scheme::Ipc => "ipc://",
            Scheme::Tcp => "tcp://",
        }
    }
}

/// A zmq endpoint whose transport is one we support.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    text: String,
    scheme: Scheme,
}

/// An endpoint that names no transport we support, or nothing after the scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {endpoint:?}: expected inproc://NAME, ipc:///PATH or tcp://HOST:PORT")]
pub struct InvalidEndpoint {
    /// The endpoint as given.
    pub endpoint: String,
}

impl Endpoint {
    /// Checks `text` and takes it as an endpoint.
    pub fn parse(text: &str) -> Result<Endpoint, InvalidEndpoint> {
        [Scheme::Inproc, Scheme::Ipc, Scheme::Tcp]
            .into_iter()
            .find(|s| text.len() > s.prefix().len() && text.starts_with(s.prefix()))
            .map(|scheme| Endpoint {
                text: text.to_string(),
                scheme,
            })
            .ok_or_else(|| InvalidEndpoint {
                endpoint: text.to_string(),
            })
    }

    /// `inproc://NAME`.
    pub fn inproc(name: &str) -> Result<Endpoint, InvalidEndpoint> {
        Endpoint::parse(&format!("inproc://{name}"))
    }

    /// `ipc://PATH`.
    pub fn ipc(path: &Path) -> Result<Endpoint, InvalidEndpoint> {
        Endpoint::parse(&format!("ipc://{}", path.display()))
    }

    /// The transport it names.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The endpoint as zmq takes it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// For `ipc://` endpoints, the socket file's path.
    pub fn ipc_path(&self) -> Option<&Path> {
        match self.scheme {
            Scheme::Ipc => Some(Path::new(&self.text[Scheme::Ipc.prefix().len()..])),
            _ => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Endpoint {
    type Err = InvalidEndpoint;
    fn from_str(s: &str) -> Result<Endpoint, InvalidEndpoint> {
        Endpoint::parse(s)
    }
}

impl TryFrom<&str> for Endpoint {
    type Error = InvalidEndpoint;
    fn try_from(s: &str) -> Result<Endpoint, InvalidEndpoint> {
        Endpoint::parse(s)
    }
}

impl TryFrom<String> for Endpoint {
    type Error = InvalidEndpoint;
    fn try_from(s: String) -> Result<Endpoint, InvalidEndpoint> {
        Endpoint::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_transports_with_something_after_the_scheme() {
        for bad in [
            "",
            "tcp://",
            "udp://1.2.3.4:5",
            "localhost:8002",
            "inproc:/x",
            "ipc://",
        ] {
            assert_eq!(
                Endpoint::parse(bad),
                Err(InvalidEndpoint {
                    endpoint: bad.to_string()
                }),
                "{bad}"
            );
        }
        for (good, scheme) in [
            ("inproc://a", Scheme::Inproc),
            ("ipc:///tmp/x", Scheme::Ipc),
            ("tcp://127.0.0.1:1", Scheme::Tcp),
            ("tcp://*:8002", Scheme::Tcp),
        ] {
            let ep: Endpoint = good.parse().unwrap();
            assert_eq!((ep.scheme(), ep.as_str()), (scheme, good));
            assert_eq!(ep.to_string(), good);
        }
    }

    #[test]
    fn an_ipc_endpoint_names_its_socket_file() {
        let ep = Endpoint::ipc(Path::new("/run/ps/stage1")).unwrap();
        assert_eq!(ep.as_str(), "ipc:///run/ps/stage1");
        assert_eq!(ep.ipc_path(), Some(Path::new("/run/ps/stage1")));
        assert_eq!(Endpoint::inproc("x").unwrap().ipc_path(), None);
    }
}
