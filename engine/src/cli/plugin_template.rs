//! The `{{name}}` nestr operation plugin.
//!
//! Build: `cargo build --release --target wasm32-wasip2`. Test: `cargo test` (natively, with a
//! scripted host: see the tests below). The engine runs the component in a sandbox: it can run
//! only the programs granted in nestr.toml (`grants = { exec = [...] }`), sees the service
//! folder at `request.workdir`, and reports what happened.

use nestr_sdk::{Error, Plugin, PluginInfo, Report, Request, exec, info};
use serde::Deserialize;

/// This plugin's `config` table in nestr.toml. nestr checks the manifest against it (unknown
/// keys, wrong types); the doc comments are the fields' descriptions.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What to say (default: hello).
    pub greeting: Option<String>,
}

pub struct Greeter;

impl Plugin for Greeter {
    type Config = Config;

    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), "Says hello through a granted program")
            .exec(["echo"])
    }

    fn run(request: Request, config: Config) -> Result<Report, Error> {
        let greeting = config.greeting.unwrap_or_else(|| "hello".to_string());
        info!("{} for service {}", request.operation, request.service.name);
        let out = exec("echo")
            .arg(format!("{greeting} from {}", request.service.name))
            .run()?;
        Report::from_exit(&out, "echo")
    }
}

nestr_sdk::export!(Greeter);

#[cfg(test)]
mod tests {
    use super::*;
    use nestr_sdk::testing::Harness;
    use nestr_sdk::Output;

    #[test]
    fn greets_the_service_through_echo() {
        let run = Harness::new(Request::new("greet", "api").with_config(serde_json::json!({
            "greeting": "hi"
        })))
        .exec(|cmd| {
            assert_eq!(cmd.program, "echo");
            assert_eq!(cmd.args, ["hi from api"]);
            Ok(Output::exited(0))
        })
        .run::<Greeter>();
        assert!(run.report().summary.starts_with("echo succeeded"));
        assert!(run.log_text().contains("greet for service api"));
    }

    #[test]
    fn fails_when_the_program_fails() {
        let run = Harness::new(Request::new("greet", "api"))
            .exec(|_| Ok(Output::exited(3)))
            .run::<Greeter>();
        assert_eq!(run.error().message(), "echo exited with code 3");
    }

    #[test]
    fn refuses_an_unknown_config_key() {
        let run = Harness::new(Request::new("greet", "api").with_config(serde_json::json!({
            "greting": "typo"
        })))
        .run::<Greeter>();
        assert!(matches!(run.error(), Error::InvalidConfig(m) if m.contains("greting")));
    }

    #[test]
    fn documents_its_config() {
        let info = nestr_sdk::describe::<Greeter>();
        assert_eq!(info.config.len(), 1);
        assert_eq!(info.config[0].name, "greeting");
        assert_eq!(info.config[0].ty, "string");
    }
}
