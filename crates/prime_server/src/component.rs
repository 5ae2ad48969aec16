//! Threads of the library's components (proxies, workers, the pump when no runtime hosts it):
//! each named, each component running in a tracing span that names it (with its stage and id),
//! and never silent about how it ended. An error is logged when the component returns it; a
//! panic is logged when the thread is joined, instead of being discarded with the join result.

use crate::Error;
use std::thread::JoinHandle;

/// Starts `f` on a thread called `name`. An error it returns is logged.
pub(crate) fn spawn<F>(name: String, f: F) -> Result<JoinHandle<()>, Error>
where
    F: FnOnce() -> Result<(), Error> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Err(e) = f() {
                tracing::error!(error = %e, "component failed");
            }
        })
        .map_err(|cause| Error::Io {
            op: "start a thread",
            cause,
        })
}

/// Waits for a component's thread; a panic in it is reported, not dropped.
pub fn join(thread: JoinHandle<()>) {
    let name = thread.thread().name().unwrap_or("unnamed").to_string();
    if let Err(panic) = thread.join() {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(thread = %name, panic = %msg, "component thread panicked");
    }
}
