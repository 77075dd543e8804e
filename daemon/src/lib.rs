//! Spillway: runs Mistral's Ministral 3 (3B, int4, memory-mapped) on ARM boards under a
//! strict RAM budget, and spills requests to a cloud router when the board is too hot,
//! short of memory or too busy. Prompts arrive over MQTT; answers stream back.
//!
//! This crate is the daemon and its command-line tools. The compute kernels live in
//! [`spillway_kernels`]. Module map (`docs/architecture.md` in the repository draws the
//! request path through them):
//!
//! - [`model`]: hyperparameters from GGUF metadata, validated against the tensors; memory
//!   figures.
//! - [`board`]: board profiles (thermal limits, cores, engine defaults per RAM size) and
//!   detection from the device tree, `/proc/cpuinfo` and `MemTotal`.
//! - [`config`]: the TOML configuration as typed sections, environment and flag overrides,
//!   validation (reading nothing), then resolution against the machine, the board files
//!   and the password files.
//! - [`engine`]: memory plan, session slots with prompt caching, sampling, the
//!   generation loop with streaming and cancellation.
//! - [`service`]: `spillway serve`: the transport-neutral intake (validation,
//!   idempotency, the durable request journal, admission), the local queue and engine
//!   thread, the cloud spills, the reply sink, the MQTT front end and its connection
//!   driver, status and telemetry, bounded shutdown.
//! - [`router`]: the routing policy (a pure decision table with a thermal state machine).
//! - [`cloud`]: the HTTPS forwarder (OpenAI-compatible, streaming), its health and the
//!   cloud token.
//! - [`monitor`]: readings of temperature and memory under a root directory.
//! - [`sysfs`]: the bounded readers of `/sys` and `/proc` files (and `/proc/meminfo`, the
//!   cgroup's memory files) that the monitor and board detection share.
//! - [`synth`]: random-weight models with the real shapes, for tests and benchmarks.
//! - [`rng`]: SplitMix64, the seeded generator behind synth's weights and the sampler's
//!   seeding.
//! - [`tokenizer`]: Mistral's Tekken tokenizer (pre-tokenizer, BPE, streaming
//!   detokenizer) and the Instruct chat format, from GGUF or `tekken.json`.
//! - [`units`]: byte sizes as people write them (`3GiB`) and print them.
//! - [`cli`]: one module per subcommand; `main.rs` only parses and dispatches.
//!
//! GGUF reading and writing live in the `spillway-gguf` crate.

pub mod board;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod constrain;
pub mod engine;
pub mod model;
pub mod monitor;
pub mod rng;
pub mod router;
pub mod service;
pub mod synth;
pub mod sysfs;
pub mod tokenizer;
pub mod units;
