//! What the end-to-end tests (`tests/`) and the benchmark (`bench/`) share, so that a fix to how
//! a run is isolated, started, seeded or torn down is made once: an environment of its own per
//! run ([`env`]), the workspace's binaries as processes ([`process`]), organizations and tokens
//! ([`seed`]), Prometheus pages ([`prometheus`]) and removing what a run made ([`teardown`]).

pub mod env;
pub mod process;
pub mod prometheus;
pub mod seed;
pub mod teardown;
