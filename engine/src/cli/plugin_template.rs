//! The `{{name}}` nestr operation plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`. The engine runs it in a sandbox: it can
//! run only the programs granted in nestr.toml (`grants = { exec = [...] }`), sees the service
//! folder at `request.workdir`, and reports what happened.

use nestr_sdk::{Error, Plugin, PluginInfo, Report, Request, exec, info};
use serde::Deserialize;

/// This plugin's `config` table in nestr.toml.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// What to greet.
    greeting: Option<String>,
}

struct Plugin_;

impl Plugin for Plugin_ {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), "Says hello through a granted program")
            .exec(["echo"])
            .field("greeting", "string", false, "what to say (default: hello)")
    }

    fn run(request: Request) -> Result<Report, Error> {
        let config: Config = request.config()?;
        let greeting = config.greeting.unwrap_or_else(|| "hello".to_string());
        info!("{} for service {}", request.operation, request.service.name);
        let out = exec("echo").arg(format!("{greeting} from {}", request.service.name)).run()?;
        Ok(Report::from_exit(&out, "echo"))
    }
}

nestr_sdk::export!(Plugin_);
