//! `nestr cache`: the operation cache — why a step missed (`explain RUN SERVICE [--against
//! RUN2]`), what it holds (`stats`), and bounding it (`prune --max-size 2G --older-than 30d`).

use clap::{Args, Subcommand};

use super::render::{Tone, Ui};
use super::{CliError, ExitCode};
use crate::cache::Blobs;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Which parts of a step's key differ from the nearest other entry for that service and
    /// operation (or from the step in another run).
    Explain {
        run: String,
        service: String,
        /// Compare with this run's step of the service instead of the nearest entry.
        #[arg(long, value_name = "RUN2")]
        against: Option<String>,
        /// Print the explanation as JSON (the API's shape).
        #[arg(long)]
        json: bool,
    },
    /// Entries, size, hits and misses, time saved.
    Stats {
        /// Print the figures as JSON (the API's shape).
        #[arg(long)]
        json: bool,
    },
    /// Deletes entries: those unused for longer than --older-than, then the least recently used
    /// until the rest fit in --max-size.
    Prune {
        /// E.g. 2G, 500M, or a number of bytes.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, required_unless_present = "older_than")]
        max_size: Option<u64>,
        /// E.g. 30d, 12h.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::manifest::parse_size_text(s)
        .ok_or_else(|| format!("`{s}` is not a size: write e.g. 2G, 500M or a number of bytes"))
}

pub fn run(ws: &mut Workspace, args: CacheArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    match args.command {
        CacheCommand::Explain {
            run,
            service,
            against,
            json,
        } => {
            let manifest = ws.manifest.clone();
            let store = ws.store()?;
            let e = crate::cache::explain::explain(
                &manifest,
                store,
                &run,
                &service,
                against.as_deref(),
            )
            .map_err(|e| CliError::usage(e.to_string()))?;
            if json {
                return super::print_json(&e);
            }
            let short = |k: &str| k[..k.len().min(12)].to_string();
            println!(
                "{} in run {}: key {}…{}",
                e.service,
                e.run_id,
                short(&e.key),
                if e.hit { " (a hit)" } else { "" }
            );
            match (&e.against, e.differences.is_empty()) {
                (None, _) => println!(
                    "  nothing to compare with: no other key is stored or recorded for `{}` and this operation",
                    e.service
                ),
                (Some(k), true) => println!("  the same key as {}…: nothing differs", short(k)),
                (Some(k), false) => {
                    println!(
                        "  compared with key {}…{}:",
                        short(k),
                        e.against_run
                            .as_deref()
                            .map(|r| format!(" (run {r})"))
                            .unwrap_or_default()
                    );
                    for d in &e.differences {
                        println!("  - {}", super::render::untrusted(d, false));
                    }
                }
            }
            Ok(ExitCode::Ok)
        }
        CacheCommand::Stats { json } => {
            let stats = ws.store()?.cache_stats()?;
            if json {
                return super::print_json(&stats);
            }
            println!(
                "{} entries, {} in {} blobs",
                stats.entries,
                bytes(stats.bytes),
                stats.blobs
            );
            println!(
                "{} hits, {} misses over the recorded runs; hits saved {}",
                stats.hits,
                stats.misses,
                super::run::duration(u64::try_from(stats.saved_ms).unwrap_or(0))
            );
            Ok(ExitCode::Ok)
        }
        CacheCommand::Prune {
            max_size,
            older_than,
            json,
        } => {
            let blobs = Blobs::new(ws.state_dir());
            let before = older_than
                .map(|d| crate::store::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let (entries, freed) = crate::cache::prune(ws.store()?, &blobs, max_size, before)
                .map_err(|e| CliError::usage(format!("cannot prune the cache: {e}")))?;
            if json {
                return super::print_json(
                    &serde_json::json!({"entries_removed": entries, "bytes_freed": freed}),
                );
            }
            println!(
                "{} {entries} entr{}, freed {}",
                ui.paint(Tone::Good, "pruned"),
                if entries == 1 { "y" } else { "ies" },
                bytes(i64::try_from(freed).unwrap_or(i64::MAX))
            );
            Ok(ExitCode::Ok)
        }
    }
}

/// `1.5 MiB`.
fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        x if x >= (1u64 << 30) as f64 => format!("{:.1} GiB", x / (1u64 << 30) as f64),
        x if x >= (1u64 << 20) as f64 => format!("{:.1} MiB", x / (1u64 << 20) as f64),
        x if x >= 1024.0 => format!("{:.1} KiB", x / 1024.0),
        x => format!("{x} B"),
    }
}
