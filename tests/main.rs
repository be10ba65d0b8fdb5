//! The one integration test binary (see DESIGN.md §6.8): every test here runs the real `nestr`
//! binary or library against real git repositories in temp folders and a real SQLite file.

mod api;
mod apiload;
mod branches;
mod builtins;
mod cache;
mod cli;
mod contract;
mod dashboard;
mod deploys;
mod exec;
mod git;
mod manifest;
mod plugins;
mod sandbox;
mod scheduler;
mod support;
