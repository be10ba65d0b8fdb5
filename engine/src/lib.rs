//! nestr: a multi-repository workspace orchestrator.
//!
//! The library holds the whole engine; the `nestr` binary (`main.rs`) only parses arguments and
//! maps errors to exit codes. Dependencies point one way: `cli`, `api` → `workspace` → `scheduler`
//! → `plugin` (→ `contain`), `git`, `store`, `manifest`; `metrics` is a leaf every layer may update (see
//! docs/ARCHITECTURE.md).

pub mod api;
pub mod cli;
pub mod contain;
pub mod git;
pub mod manifest;
pub mod metrics;
pub mod plugin;
pub mod redact;
pub mod scheduler;
pub mod store;
pub mod views;
pub mod workspace;
