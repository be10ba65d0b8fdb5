//! nestr: a multi-repository workspace orchestrator.
//!
//! The library holds the whole engine; the `nestr` binary (`main.rs`) only parses arguments and
//! maps errors to exit codes. Dependencies point one way: `cli` → `workspace` → `git`, `store`,
//! `manifest` (see docs/ARCHITECTURE.md).

pub mod cli;
pub mod git;
pub mod manifest;
pub mod plugin;
pub mod redact;
pub mod scheduler;
pub mod store;
pub mod workspace;
