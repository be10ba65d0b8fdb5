//! nestr: a multi-repository workspace orchestrator.
//!
//! The library holds the whole engine; the `nestr` binary (`main.rs`) only parses arguments and
//! maps errors to exit codes. Dependencies point one way: `cli`, `api` → `workspace` → `scheduler`
//! → `plugin` (→ `contain`), `git`, `store`, `manifest`; `metrics` is a leaf every layer may update and `model` the vocabulary they all share (see
//! docs/ARCHITECTURE.md).

pub mod affected;
pub mod api;
pub mod cache;
pub mod cli;
pub mod contain;
pub mod deploy;
pub(crate) mod git;
pub mod manifest;
pub(crate) mod metrics;
pub mod model;
pub mod plugin;
pub mod redact;
pub mod scheduler;
pub mod store;
pub(crate) mod views;
pub mod workspace;

pub use git::warm_up as warm_up_git;
