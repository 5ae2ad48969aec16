//! The daemons' shared code: the prime demo's stages and simulation mode, the work functions the
//! daemons know by name, the static file server, and the plumbing every daemon shares (logging,
//! signals, running a front server, proxies and workers from a topology).

pub mod daemon;
pub mod files;
pub mod prime;
pub mod work;
