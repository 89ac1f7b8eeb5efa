//! Test helpers for the end-to-end suite.
//!
//! [`TestStack`] runs the real api and worker (as libraries, on port 0, or as the real binaries)
//! against the real RabbitMQ and MongoDB named by `AMQP_URL` / `MONGODB_URI`, and a real
//! push-gateway-sim, with a fresh database and queue prefix per test. Its parts: starting and
//! tearing it down (`stack`), the processes a test can kill (`processes`), the data a test needs
//! (`seed`), the HTTP calls a test makes (`client`), `refreshctl` (`cli`), the audit after a
//! kill (`audit`) and the local RabbitMQ cluster (`cluster`).

mod audit;
mod cli;
mod client;
pub mod cluster;
pub mod omadm;
mod processes;
pub mod proxy;
pub mod raw;
mod seed;
mod stack;
mod wait;

pub use audit::PushAudit;
pub use client::Answer;
pub use processes::{Another, binary};
pub use refresh_testkit::prometheus::sample;
pub use stack::{TestStack, test_env};
pub use wait::{DEADLINE, wait_until};
