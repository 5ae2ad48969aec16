//! The daemons' shared code: the prime demo's stages and simulation mode, the work functions the
//! daemons know by name, the static file server, the plumbing every daemon shares (logging,
//! signals, running a front server, proxies and workers from a topology), the one rule by which
//! their flags meet the topology file (`flags`), and reading the daemons' Prometheus metrics
//! (`scrape`: what `prime_top` and the tests use).

pub mod daemon;
pub mod files;
pub mod flags;
pub mod prime;
pub mod scrape;
pub mod top;
pub mod work;
