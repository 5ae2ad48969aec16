//! The process's open-file limit (`RLIMIT_NOFILE`): raised to its ceiling when a daemon starts,
//! and the share of it that a front's client connections may take.
//!
//! Why a share: libzmq aborts the whole process (an assertion in `ipc_listener.cpp`) when it
//! cannot get a descriptor to accept a worker's connection, and it needs descriptors for its own
//! signalers and reconnects too. A front that lets its clients take every descriptor is one
//! worker start away from dying. So client connections are capped (see
//! [`max_connections_for`]) and the rest of the limit is kept for zmq and the process itself.
//!
//! ```
//! use prime_server::fd_limit::max_connections_for;
//! assert_eq!(max_connections_for(1024), 768);
//! assert_eq!(max_connections_for(256), 128);
//! ```

/// The soft limit assumed when the real one cannot be read: Linux's usual default.
const FALLBACK_SOFT: u64 = 1024;

/// The fixed part of the reserve: what a one-host deployment's zmq needs in a front (about 30
/// descriptors of its own: context, io and reaper threads, a signaler per socket, listeners) plus
/// two connections per worker thread of every stage (loopback and interrupt), for about a hundred
/// worker threads.
const FIXED_RESERVE: u64 = 256;

/// The soft and hard open-file limits of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The limit in force: opening a descriptor beyond it fails with `EMFILE`.
    pub soft: u64,
    /// The ceiling an unprivileged process may raise its soft limit to.
    pub hard: u64,
}

/// The process's open-file limits.
pub fn current() -> std::io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FdLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Raises the soft open-file limit to the hard limit, so a front can hold as many connections as
/// the system lets it without the operator tuning `ulimit -n` (systemd and most shells start
/// daemons at 1024 while allowing far more). Logs the limit in force afterwards and returns it;
/// if raising fails, logs why and goes on with the limit it has.
pub fn raise() -> std::io::Result<FdLimit> {
    let before = current()?;
    if before.soft < before.hard {
        let lim = libc::rlimit {
            rlim_cur: before.hard,
            rlim_max: before.hard,
        };
        // SAFETY: setrlimit reads one rlimit through a pointer to a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(soft = before.soft, hard = before.hard, error = %e,
                "cannot raise the open-file limit; keeping the soft limit");
        }
    }
    let now = current()?;
    tracing::info!(
        soft = now.soft,
        hard = now.hard,
        was = before.soft,
        "open-file limit"
    );
    Ok(now)
}

/// How many descriptors a front keeps for everything but its client connections when its soft
/// limit is `soft`: a quarter of the limit or 256, whichever is larger, but never more than half
/// the limit (a process started with a tiny limit still serves some clients).
///
/// The quarter is for large deployments: the descriptors zmq needs grow with the number of worker
/// threads connected to the front, which grows with the machines an operator gives a large
/// limit to; a front with 750k client connections instead of a million loses nothing it could
/// use, as memory runs out first.
pub fn reserve(soft: u64) -> u64 {
    (soft / 4).max(FIXED_RESERVE.min(soft / 2))
}

/// The default cap on a process's client connections when its soft limit is `soft`: the limit
/// less the [`reserve`], at least 1.
pub fn max_connections_for(soft: u64) -> usize {
    usize::try_from(soft.saturating_sub(reserve(soft)).max(1)).unwrap_or(usize::MAX)
}

/// The default cap on this process's client connections, from its soft limit now (so call it
/// after [`raise`]).
pub fn default_max_connections() -> usize {
    max_connections_for(current().map_or(FALLBACK_SOFT, |l| l.soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_quarter_or_256_but_at_most_half() {
        for (soft, cap) in [
            (8, 4),
            (256, 128),
            (512, 256),
            (1024, 768),
            (4096, 3072),
            (20_000, 15_000),
            (1 << 20, 3 << 18),
        ] {
            assert_eq!(max_connections_for(soft), cap, "soft limit {soft}");
        }
        assert_eq!(max_connections_for(1), 1);
        assert_eq!(max_connections_for(0), 1);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_limit() {
        let l = raise().unwrap();
        assert_eq!(l, current().unwrap());
        assert_eq!(l.soft, l.hard);
        assert_eq!(default_max_connections(), max_connections_for(l.soft));
    }
}
