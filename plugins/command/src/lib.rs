//! The `command` built-in plugin: runs the argv lists in its config, in order, in the service
//! folder, and stops at the first failure. There is no shell unless `sh` is granted and named.
//!
//! ```toml
//! build = { plugin = "command", config = { run = [["make", "build"], ["make", "check"]] } }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use nestr_sdk::{Error, Plugin, PluginInfo, Report, Request, exec, info};
use serde::Deserialize;

/// The command plugin's `config` table.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Commands as argv lists, e.g. [["make", "build"]].
    run: Vec<Vec<String>>,
    /// Folder relative to the service folder.
    cwd: Option<String>,
    /// Variables to set; names must be granted in env.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Seconds each command may take.
    timeout_secs: Option<u64>,
}

struct Command;

impl Plugin for Command {
    type Config = Config;

    fn describe() -> PluginInfo {
        PluginInfo::new(
            "command",
            env!("CARGO_PKG_VERSION"),
            "Runs the commands listed in `run` in order; stops at the first failure",
        )
        .exec(["*"])
        .env(["*"])
        .secrets(["*"])
    }

    fn run(_request: Request, config: Config) -> Result<Report, Error> {
        if config.run.is_empty() {
            return Err(Error::InvalidConfig("`run` lists no command".into()));
        }
        let total = config.run.len();
        for (i, argv) in config.run.iter().enumerate() {
            let Some((program, args)) = argv.split_first() else {
                return Err(Error::InvalidConfig(format!(
                    "command {} of `run` is empty",
                    i + 1
                )));
            };
            let mut cmd = exec(program).args(args.iter().cloned());
            if let Some(cwd) = &config.cwd {
                cmd = cmd.cwd(cwd.clone());
            }
            for (k, v) in &config.env {
                cmd = cmd.env(k.clone(), v.clone());
            }
            if let Some(secs) = config.timeout_secs {
                cmd = cmd.timeout(Duration::from_secs(secs));
            }
            let line = cmd.display();
            info!("$ {line}");
            let out = cmd.run()?;
            if !out.success() {
                return Err(Error::failed(format!("`{line}` {}", out.describe()))
                    .metric("commands_run", i + 1));
            }
        }
        Ok(Report::success(format!(
            "{total} command{} succeeded",
            if total == 1 { "" } else { "s" }
        ))
        .metric("commands_run", total))
    }
}

nestr_sdk::export!(Command);
