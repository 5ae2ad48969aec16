//! The daemons' shared code: the prime demo's stages and simulation mode.

pub mod prime;
