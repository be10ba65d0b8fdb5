//! `nestr-sdk`: everything a nestr operation plugin author needs, with the WIT bindings hidden.
//!
//! ```ignore
//! use nestr_sdk::{Plugin, PluginInfo, Request, Report, Error, exec, info};
//!
//! struct Lint;
//!
//! impl Plugin for Lint {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("lint", env!("CARGO_PKG_VERSION"), "Runs eslint").exec(["eslint"])
//!     }
//!     fn run(req: Request) -> Result<Report, Error> {
//!         let out = exec("eslint").args(["."]).run()?;
//!         info!("eslint exited with {:?}", out.exit_code);
//!         Ok(Report::from_exit(&out, "eslint"))
//!     }
//! }
//!
//! nestr_sdk::export!(Lint);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and reference the `.wasm` from
//! `nestr.toml` with `[plugins.NAME] path = "…"`. See docs/plugin-authoring.md.

pub mod parse;

use std::time::Duration;

/// The generated bindings of the `operation` world (for the export macro; authors do not need
/// them directly).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "operation",
        pub_export_macro: true,
        export_macro_name: "__export_operation",
        default_bindings_module: "::nestr_sdk::bindings",
        generate_all,
    });
}

pub use bindings::nestr::plugin::exec::Output;
pub use bindings::nestr::plugin::log::Level;
pub use bindings::nestr::plugin::types::{
    Artifact, Capabilities, ConfigField, Denial, Error, FsAccess, Outcome, PluginInfo, Report,
    Request, Service, TestCounts,
};

/// An operation plugin: implement this and call [`export!`].
pub trait Plugin {
    /// Name, version, supported operations, needed capabilities, config fields.
    fn describe() -> PluginInfo;
    /// Does the work of one step.
    fn run(request: Request) -> Result<Report, Error>;
}

/// Exports a [`Plugin`] implementation as the component's `describe` and `run`.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            struct __NestrPlugin;
            impl $crate::bindings::Guest for __NestrPlugin {
                fn describe() -> $crate::PluginInfo {
                    <$plugin as $crate::Plugin>::describe()
                }
                fn run(request: $crate::Request) -> Result<$crate::Report, $crate::Error> {
                    <$plugin as $crate::Plugin>::run(request)
                }
            }
    $crate::bindings::__export_operation!(__NestrPlugin with_types_in $crate::bindings);
        };
    };
}

/// Writes a line into the step log.
pub fn log(level: Level, message: &str) {
    bindings::nestr::plugin::log::log(level, message);
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

impl Request {
    /// The operation's `config` table deserialized into the plugin's own type; a mismatch is an
    /// `invalid-config` error naming the problem.
    /// An empty or `null` config reads as `{}`.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        let text = self.config.trim();
        let text = if text.is_empty() || text == "null" {
            "{}"
        } else {
            text
        };
        serde_json::from_str(text).map_err(|e| {
            // The position would point into JSON the user never wrote: keep only the message.
            let text = e.to_string();
            let text = text
                .rsplit_once(" at line ")
                .map_or(text.as_str(), |(msg, _)| msg)
                .to_string();
            Error::InvalidConfig(text)
        })
    }

    /// The guest path of the service folder joined with `rel`.
    pub fn path(&self, rel: &str) -> String {
        format!(
            "{}/{}",
            self.workdir.trim_end_matches('/'),
            rel.trim_start_matches('/')
        )
    }
}

impl PluginInfo {
    /// A plugin that supports any operation and needs nothing.
    pub fn new(name: &str, version: &str, description: &str) -> PluginInfo {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            operations: Vec::new(),
            capabilities: Capabilities {
                exec: Vec::new(),
                env: Vec::new(),
                secrets: Vec::new(),
                http: Vec::new(),
                fs: FsAccess::ReadOnly,
            },
            config: Vec::new(),
        }
    }

    /// Restricts the plugin to these operations.
    pub fn operations<'a>(mut self, ops: impl IntoIterator<Item = &'a str>) -> Self {
        self.operations.extend(ops.into_iter().map(str::to_string));
        self
    }

    /// Declares programs the plugin runs.
    pub fn exec<'a>(mut self, programs: impl IntoIterator<Item = &'a str>) -> Self {
        self.capabilities
            .exec
            .extend(programs.into_iter().map(str::to_string));
        self
    }

    /// Declares environment variables passed to programs.
    pub fn env<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.capabilities
            .env
            .extend(names.into_iter().map(str::to_string));
        self
    }

    /// Declares secrets passed to programs (masked in logs).
    pub fn secrets<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.capabilities
            .secrets
            .extend(names.into_iter().map(str::to_string));
        self
    }

    /// Declares HTTP origins the plugin contacts.
    pub fn http<'a>(mut self, origins: impl IntoIterator<Item = &'a str>) -> Self {
        self.capabilities
            .http
            .extend(origins.into_iter().map(str::to_string));
        self
    }

    /// Declares the filesystem access the plugin needs.
    pub fn fs(mut self, access: FsAccess) -> Self {
        self.capabilities.fs = access;
        self
    }

    /// Documents a config field. nestr checks every operation's `config` against the documented
    /// fields when the manifest loads (unknown keys, missing required ones, wrong JSON types:
    /// `string`, `bool`, `integer`, `number`, `array`, `object`), so document every field read.
    pub fn field(mut self, name: &str, ty: &str, required: bool, description: &str) -> Self {
        self.config.push(ConfigField {
            name: name.to_string(),
            type_: ty.to_string(),
            required,
            description: description.to_string(),
        });
        self
    }
}

impl Report {
    /// A succeeded report with a summary.
    pub fn success(summary: impl Into<String>) -> Report {
        Report {
            outcome: Outcome::Succeeded,
            summary: summary.into(),
            tests: None,
            artifacts: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// A failed report with the reason (also the summary).
    pub fn failure(reason: impl Into<String>) -> Report {
        let reason = reason.into();
        Report {
            outcome: Outcome::Failed(reason.clone()),
            summary: reason,
            tests: None,
            artifacts: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// A skipped report with the reason.
    pub fn skipped(reason: impl Into<String>) -> Report {
        let reason = reason.into();
        Report {
            outcome: Outcome::Skipped(reason.clone()),
            ..Report::success(reason)
        }
    }

    /// Succeeded when the program exited 0, failed with its exit status otherwise.
    pub fn from_exit(out: &Output, what: &str) -> Report {
        if out.success() {
            Report::success(format!("{what} succeeded in {} ms", out.duration_ms))
        } else {
            Report::failure(format!("{what} {}", out.describe()))
        }
    }

    /// Adds test counts.
    pub fn with_tests(mut self, tests: TestCounts) -> Self {
        self.tests = Some(tests);
        self
    }

    /// Adds a metric.
    pub fn metric(mut self, key: &str, value: impl ToString) -> Self {
        self.metrics.push((key.to_string(), value.to_string()));
        self
    }
}

impl Output {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// `exited with code 2`, `was killed by signal 9`, `timed out after 5000 ms`.
    pub fn describe(&self) -> String {
        if self.timed_out {
            return format!("timed out after {} ms", self.duration_ms);
        }
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended without a status".to_string(),
        }
    }
}

impl Error {
    /// A sentence for humans: what was refused and the grant that would allow it, or why the
    /// config is invalid, or why the work failed.
    pub fn message(&self) -> String {
        match self {
            Error::Denied(d) => format!(
                "{} `{}` is not granted; add to nestr.toml: {}",
                d.capability, d.requested, d.grant
            ),
            Error::InvalidConfig(m) => format!("invalid config: {m}"),
            Error::Failed(m) => m.clone(),
        }
    }
}

/// Starts building a command for a granted program.
pub fn exec(program: &str) -> Command {
    Command {
        inner: bindings::nestr::plugin::exec::Command {
            program: program.to_string(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout_ms: None,
        },
    }
}

/// A program to run through the engine (see [`exec`]).
#[derive(Debug, Clone)]
pub struct Command {
    inner: bindings::nestr::plugin::exec::Command,
}

impl Command {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.inner.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inner.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs in this folder, relative to the service folder.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.inner.cwd = Some(dir.into());
        self
    }

    /// Sets a (granted) environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.env.push((name.into(), value.into()));
        self
    }

    pub fn timeout(mut self, d: Duration) -> Self {
        self.inner.timeout_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Runs the program to completion; its output streams into the step log.
    pub fn run(self) -> Result<Output, Error> {
        bindings::nestr::plugin::exec::run(&self.inner)
    }

    /// Runs it and turns anything but exit code 0 into `Error::Failed`.
    pub fn check(self) -> Result<Output, Error> {
        let line = self.display();
        let out = self.run()?;
        if out.success() {
            Ok(out)
        } else {
            Err(Error::Failed(format!("`{line}` {}", out.describe())))
        }
    }

    /// The command line as shown in messages, quoted the way a POSIX shell would read it back
    /// (`sh -c 'echo a b'`), so that what is shown is what ran.
    pub fn display(&self) -> String {
        std::iter::once(self.inner.program.as_str())
            .chain(self.inner.args.iter().map(String::as_str))
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
