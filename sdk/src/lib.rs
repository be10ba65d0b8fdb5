//! `nestr-sdk`: everything a nestr operation plugin author needs, with the WIT contract
//! (`nestr:plugin@0.2.0`) behind curated Rust types.
//!
//! ```ignore
//! use nestr_sdk::{Error, Plugin, PluginInfo, Report, Request, exec, info};
//!
//! /// The `config` table of this plugin in nestr.toml: the one declaration (nestr checks the
//! /// manifest against it; doc comments become the field descriptions).
//! #[derive(serde::Deserialize, schemars::JsonSchema, Default)]
//! #[serde(deny_unknown_fields, default)]
//! struct Config {
//!     /// Extra arguments for eslint.
//!     args: Vec<String>,
//! }
//!
//! struct Lint;
//!
//! impl Plugin for Lint {
//!     type Config = Config;
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("lint", env!("CARGO_PKG_VERSION"), "Runs eslint").exec(["eslint"])
//!     }
//!     fn run(req: Request, config: Config) -> Result<Report, Error> {
//!         let out = exec("eslint").arg(".").args(config.args).run()?;
//!         info!("eslint exited with {:?}", out.exit_code);
//!         Report::from_exit(&out, "eslint")
//!     }
//! }
//!
//! nestr_sdk::export!(Lint);
//! ```
//!
//! A step succeeds or is skipped with a [`Report`], and fails with an [`Error`]: one channel.
//! Programs run through [`exec`], HTTP goes through [`http`]; a refusal comes back as
//! [`Error::Denied`] — pass it on with `?`. [`testing`] runs `run` natively with a scripted
//! host, or replays a tape recorded from a real step. Build the component with
//! `cargo build --release --target wasm32-wasip2`; see docs/plugin-authoring.md.

pub mod http;
pub mod parse;
pub mod schema;
pub mod tape;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

#[cfg(feature = "guest")]
mod wit;

pub use types::*;

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(all(target_arch = "wasm32", not(feature = "guest")))]
compile_error!("a plugin built for wasm32 needs nestr-sdk's `guest` feature (on by default)");

/// The generated bindings of the `operation` world (for [`export!`]; authors do not use them).
#[cfg(feature = "guest")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "operation",
        pub_export_macro: true,
        export_macro_name: "__export_operation",
        default_bindings_module: "::nestr_sdk::bindings",
        generate_all,
    });
}

/// An operation plugin: implement this and call [`export!`].
pub trait Plugin {
    /// The plugin's `config` table, read with serde; its `JsonSchema` is the documentation
    /// nestr checks the manifest against. [`NoConfig`] when it takes none.
    type Config: serde::de::DeserializeOwned + schemars::JsonSchema;
    /// Name, version, supported operations, needed capabilities. The config fields are filled
    /// from [`Plugin::Config`].
    fn describe() -> PluginInfo;
    /// Does the work of one step. A config that does not read as [`Plugin::Config`] never gets
    /// here: the step fails with [`Error::InvalidConfig`] naming the problem.
    fn run(request: Request, config: Self::Config) -> Result<Report, Error>;
}

/// The config of a plugin that takes none: any key in the `config` table is an error.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// What `describe` answers for `P`: its own info with the config fields of `P::Config`.
pub fn describe<P: Plugin>() -> PluginInfo {
    let mut info = P::describe();
    info.config = schema::fields::<P::Config>();
    info
}

/// Runs `P` on a request: its config read, then `run`.
pub fn run<P: Plugin>(request: Request) -> Result<Report, Error> {
    let config = request.config::<P::Config>()?;
    P::run(request, config)
}

/// Exports a [`Plugin`] implementation as the component's `describe` and `run` (on wasm32; a
/// native build, such as `cargo test`'s, exports nothing).
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __NestrPlugin;
            impl $crate::bindings::Guest for __NestrPlugin {
                fn describe() -> $crate::bindings::nestr::plugin::types::PluginInfo {
                    $crate::__private::describe::<$plugin>()
                }
                fn run(
                    request: $crate::bindings::nestr::plugin::types::Request,
                ) -> Result<
                    $crate::bindings::nestr::plugin::types::Report,
                    $crate::bindings::nestr::plugin::types::Error,
                > {
                    $crate::__private::run::<$plugin>(request)
                }
            }
    $crate::bindings::__export_operation!(__NestrPlugin with_types_in $crate::bindings);
        };
    };
}

#[cfg(feature = "guest")]
#[doc(hidden)]
pub mod __private {
    pub use crate::wit::{describe, run};
}

/// Writes a line into the step log.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Logs at info level, `format!` style.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log($crate::Level::Info, &format!($($t)*)) };
}

/// Logs at warn level, `format!` style.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log($crate::Level::Warn, &format!($($t)*)) };
}

/// Logs at error level, `format!` style.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log($crate::Level::Error, &format!($($t)*)) };
}

/// Logs at debug level, `format!` style.
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log($crate::Level::Debug, &format!($($t)*)) };
}

/// Starts building a command for a granted program.
pub fn exec(program: &str) -> Command {
    Command {
        program: program.to_string(),
        args: Vec::new(),
        cwd: None,
        env: Vec::new(),
        timeout_ms: None,
        capture: false,
    }
}

/// A program to run through the engine (see [`exec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// A granted program: a name looked up on the engine's PATH, or an absolute path.
    pub program: String,
    pub args: Vec<String>,
    /// Relative to the service folder; it may not leave it.
    pub cwd: Option<String>,
    /// Variables to set; each name must be granted.
    pub env: Vec<(String, String)>,
    pub timeout_ms: Option<u64>,
    /// Return stdout in [`Output::stdout`] instead of writing it to the step log.
    pub capture: bool,
}

impl Command {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs in this folder, relative to the service folder.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets a (granted) environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Ends the program after `d` (the step's deadline applies as well).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Keeps stdout for the plugin ([`Output::stdout`], up to 16 MiB) instead of the step log;
    /// for programs whose output the plugin parses (`cargo metadata`, `npm pack --json`).
    pub fn capture(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Runs the program to completion; its output streams into the step log.
    pub fn run(self) -> Result<Output, Error> {
        host::exec(&self)
    }

    /// Runs it and turns anything but exit code 0 into a failure naming the command.
    pub fn check(self) -> Result<Output, Error> {
        let line = self.display();
        let out = self.run()?;
        if out.success() {
            Ok(out)
        } else {
            Err(Error::failed(format!("`{line}` {}", out.describe())))
        }
    }

    /// The command line as shown in messages, quoted the way a POSIX shell would read it back
    /// (`sh -c 'echo a b'`), so that what is shown is what ran.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .map(shell_quote)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `word` as a POSIX shell word: as it is when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside written `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Where host calls go: the engine (wasm32), or the [`testing`] harness (native).
mod host {
    use crate::{Command, Error, Level, Output, http};

    pub fn log(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        crate::wit::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::log(level, message);
    }

    pub fn exec(command: &Command) -> Result<Output, Error> {
        #[cfg(target_arch = "wasm32")]
        return crate::wit::exec(command);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::exec(command)
    }

    pub fn http(request: &http::Request) -> Result<http::Response, Error> {
        #[cfg(target_arch = "wasm32")]
        return crate::wit::http(request);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::http(request)
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn displayed_words_read_back_as_the_same_words() {
        assert_eq!(shell_quote("make"), "make");
        assert_eq!(shell_quote("--features=a,b"), "--features=a,b");
        assert_eq!(shell_quote("echo a b"), "'echo a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        // A POSIX shell reads them back as the words they were.
        for word in ["echo a b", "it's", "$HOME", "a\"b", "*", "", "x;y"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s' {}", shell_quote(word)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
    }
}
