//! The one answer every request gets, shared by the server core, its in-memory stages and the
//! client protocols. A leaf: it depends on nothing else in the crate, so every part that answers
//! a request can name these types without importing another part.

/// A failure answered in place of a reply. `status` follows HTTP's codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 500 worker failed, 503 overloaded or shutting down, 504 deadline passed, or what the work
    /// function chose.
    pub status: u16,
    /// A short text for the client.
    pub reason: String,
}

impl Failure {
    /// A failure with the given status and reason.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Failure {
            status,
            reason: reason.into(),
        }
    }
}

/// The one answer every request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A worker's reply: the protocol-specific response bytes.
    Reply(Vec<u8>),
    /// Something went wrong; see [`Failure::status`].
    Failed(Failure),
}

impl Answer {
    /// What a worker sent: status 0 with a reply body, or a failure status with its reason.
    pub(crate) fn from_worker(status: u16, body: Vec<u8>) -> Answer {
        if status == 0 {
            Answer::Reply(body)
        } else {
            Answer::Failed(Failure::new(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    }
}

/// The answer to a request whose deadline passed.
pub(crate) fn deadline_passed() -> Answer {
    Answer::Failed(Failure::new(504, "the request's deadline passed"))
}

/// Why a request still open when the server stops, or sent after its drain, is answered 503.
pub(crate) const SHUTTING_DOWN: &str = "the server is shutting down";

/// The answer to a request still open when the server stops.
pub(crate) fn shutting_down() -> Answer {
    Answer::Failed(Failure::new(503, SHUTTING_DOWN))
}
