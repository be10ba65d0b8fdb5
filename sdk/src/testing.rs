//! Running a plugin's `run` natively, in `cargo test`, with a scripted host: the programs it
//! runs and the HTTP requests it sends are answered by closures (or by a tape recorded from a
//! real step), and its log lines and calls are captured.
//!
//! ```ignore
//! use nestr_sdk::testing::Harness;
//! use nestr_sdk::{Output, Request};
//!
//! #[test]
//! fn says_hello() {
//!     let run = Harness::new(Request::new("build", "api"))
//!         .exec(|cmd| {
//!             assert_eq!(cmd.program, "echo");
//!             Ok(Output::exited(0))
//!         })
//!         .run::<MyPlugin>();
//!     assert!(run.result.is_ok(), "{:?}", run.result);
//!     assert!(run.log_text().contains("api"));
//! }
//!
//! #[test]
//! fn replays_a_recorded_step() {
//!     // written by `nestr run build -s api --record tests/tapes`
//!     nestr_sdk::testing::replay::<MyPlugin>("tests/tapes/api.build.json");
//! }
//! ```

use std::cell::RefCell;
use std::path::Path;

use crate::tape::{Call, LogLine, Tape};
use crate::{Command, Error, Level, Output, Plugin, Report, Request, http};

type ExecFn = Box<dyn FnMut(&Command) -> Result<Output, Error>>;
type HttpFn = Box<dyn FnMut(&http::Request) -> Result<http::Response, Error>>;

/// The host a test gives a plugin.
pub struct Harness {
    request: Request,
    exec: Option<ExecFn>,
    http: Option<HttpFn>,
}

/// What one run did.
#[derive(Debug)]
pub struct Run {
    /// What `run` returned (or the config error it never got past).
    pub result: Result<Report, Error>,
    /// Every host call, with the answer it got, in order.
    pub calls: Vec<Call>,
    /// Every line the plugin logged.
    pub logs: Vec<LogLine>,
}

impl Run {
    /// The log lines, one per line.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|l| l.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The commands the plugin ran.
    pub fn commands(&self) -> Vec<&Command> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Exec { command, .. } => Some(command),
                Call::Http { .. } => None,
            })
            .collect()
    }

    /// The report; panics with the error when the step did not succeed or skip.
    pub fn report(&self) -> &Report {
        match &self.result {
            Ok(r) => r,
            Err(e) => panic!("the plugin failed: {e}"),
        }
    }

    /// The error; panics with the report when the step did not fail.
    pub fn error(&self) -> &Error {
        match &self.result {
            Err(e) => e,
            Ok(r) => panic!("the plugin did not fail: {r:?}"),
        }
    }
}

enum Answer {
    Script {
        exec: Option<ExecFn>,
        http: Option<HttpFn>,
    },
    Tape {
        calls: std::vec::IntoIter<Call>,
        index: usize,
    },
}

struct Session {
    answer: Answer,
    calls: Vec<Call>,
    logs: Vec<LogLine>,
}

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// Ends the session even when the plugin panics.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        SESSION.with(|s| s.borrow_mut().take());
    }
}

fn install(answer: Answer) -> Installed {
    SESSION.with(|s| {
        *s.borrow_mut() = Some(Session {
            answer,
            calls: Vec::new(),
            logs: Vec::new(),
        });
    });
    Installed
}

fn take() -> Session {
    SESSION
        .with(|s| s.borrow_mut().take())
        .unwrap_or_else(|| panic!("the nestr-sdk test session ended early"))
}

const OUTSIDE: &str = "a nestr plugin called its host outside a nestr engine: in a native test, \
                       run it through nestr_sdk::testing::Harness";

pub(crate) fn log(level: Level, message: &str) {
    SESSION.with(|s| match s.borrow_mut().as_mut() {
        Some(session) => session.logs.push(LogLine {
            level,
            message: message.to_string(),
        }),
        None => panic!("{OUTSIDE}"),
    });
}

pub(crate) fn exec(command: &Command) -> Result<Output, Error> {
    SESSION.with(|s| {
        let mut guard = s.borrow_mut();
        let session = guard.as_mut().unwrap_or_else(|| panic!("{OUTSIDE}"));
        let result = match &mut session.answer {
            Answer::Script { exec, .. } => match exec {
                Some(f) => f(command),
                None => panic!(
                    "the plugin ran `{}`, but the harness has no exec handler: add \
                     .exec(|cmd| Ok(Output::exited(0)))",
                    command.display()
                ),
            },
            Answer::Tape { calls, index } => {
                *index += 1;
                match calls.next() {
                    Some(Call::Exec {
                        command: taped,
                        result,
                    }) if taped == *command => result,
                    Some(Call::Exec { command: taped, .. }) => panic!(
                        "call {index}: the plugin ran `{}`; the tape recorded `{}`\n  \
                         plugin: {command:?}\n  tape:   {taped:?}",
                        command.display(),
                        taped.display()
                    ),
                    Some(Call::Http { request, .. }) => panic!(
                        "call {index}: the plugin ran `{}`; the tape recorded an HTTP {} {}",
                        command.display(),
                        request.method,
                        request.url
                    ),
                    None => panic!(
                        "call {index}: the plugin ran `{}`, but the tape ends before it",
                        command.display()
                    ),
                }
            }
        };
        session.calls.push(Call::Exec {
            command: command.clone(),
            result: result.clone(),
        });
        result
    })
}

pub(crate) fn http(request: &http::Request) -> Result<http::Response, Error> {
    SESSION.with(|s| {
        let mut guard = s.borrow_mut();
        let session = guard.as_mut().unwrap_or_else(|| panic!("{OUTSIDE}"));
        let result = match &mut session.answer {
            Answer::Script { http, .. } => match http {
                Some(f) => f(request),
                None => panic!(
                    "the plugin sent {} {}, but the harness has no http handler: add \
                     .http(|req| Ok(Response::new(200)))",
                    request.method, request.url
                ),
            },
            Answer::Tape { calls, index } => {
                *index += 1;
                match calls.next() {
                    Some(Call::Http {
                        request: taped,
                        result,
                    }) if taped == *request => result,
                    Some(Call::Http { request: taped, .. }) => panic!(
                        "call {index}: the plugin sent {} {}; the tape recorded {} {}\n  \
                         plugin: {request:?}\n  tape:   {taped:?}",
                        request.method, request.url, taped.method, taped.url
                    ),
                    Some(Call::Exec { command, .. }) => panic!(
                        "call {index}: the plugin sent {} {}; the tape recorded `{}`",
                        request.method,
                        request.url,
                        command.display()
                    ),
                    None => panic!(
                        "call {index}: the plugin sent {} {}, but the tape ends before it",
                        request.method, request.url
                    ),
                }
            }
        };
        session.calls.push(Call::Http {
            request: request.clone(),
            result: result.clone(),
        });
        result
    })
}

impl Harness {
    /// A harness for this request (see [`Request::new`]); with no handlers, any program or
    /// HTTP request the plugin sends fails the test, saying which.
    pub fn new(request: Request) -> Harness {
        Harness {
            request,
            exec: None,
            http: None,
        }
    }

    /// Answers every program the plugin runs. Return `Err(Error::Denied(..))` to act out the
    /// engine refusing it.
    pub fn exec(mut self, f: impl FnMut(&Command) -> Result<Output, Error> + 'static) -> Self {
        self.exec = Some(Box::new(f));
        self
    }

    /// Answers every HTTP request the plugin sends.
    pub fn http(
        mut self,
        f: impl FnMut(&http::Request) -> Result<http::Response, Error> + 'static,
    ) -> Self {
        self.http = Some(Box::new(f));
        self
    }

    /// Runs `P` as the engine would: `describe` (its config fields derived), the request's
    /// config read as `P::Config`, then `run`.
    pub fn run<P: Plugin>(self) -> Run {
        let _session = install(Answer::Script {
            exec: self.exec,
            http: self.http,
        });
        let _ = crate::describe::<P>();
        let result = crate::run::<P>(self.request);
        let session = take();
        Run {
            result,
            calls: session.calls,
            logs: session.logs,
        }
    }
}

/// Replays a tape (written by `nestr run OP --record DIR`): runs `P` on the tape's request,
/// answers each call from the tape, and panics, saying where, when the plugin asks something
/// else, asks more or less, or returns something other than what the tape recorded.
///
/// The tape holds host calls, not the service folder: a plugin that reads its folder through
/// its own filesystem (`request.workdir`) needs [`replay_in`] with a folder holding those files.
pub fn replay<P: Plugin>(path: impl AsRef<Path>) -> Run {
    replay_tape::<P>(path.as_ref(), None)
}

/// Like [`replay`], with the request's `workdir` (the service folder in the plugin's own
/// filesystem) pointed at `workdir`, a folder of the test's.
pub fn replay_in<P: Plugin>(path: impl AsRef<Path>, workdir: impl AsRef<Path>) -> Run {
    replay_tape::<P>(path.as_ref(), Some(workdir.as_ref()))
}

fn replay_tape<P: Plugin>(path: &Path, workdir: Option<&Path>) -> Run {
    let mut tape = Tape::read(path).unwrap_or_else(|e| panic!("{e}"));
    if let Some(dir) = workdir {
        tape.request.workdir = dir.to_string_lossy().into_owned();
    }
    let recorded = tape.calls.len();
    let _session = install(Answer::Tape {
        calls: tape.calls.into_iter(),
        index: 0,
    });
    let result = crate::run::<P>(tape.request);
    let session = take();
    let run = Run {
        result,
        calls: session.calls,
        logs: session.logs,
    };
    assert_eq!(
        run.calls.len(),
        recorded,
        "{}: the plugin made {} host calls; the tape recorded {recorded} (it returned {:?}; the \
         tape recorded {:?})",
        path.display(),
        run.calls.len(),
        run.result,
        tape.result
    );
    if let Some(expected) = &tape.result {
        assert_eq!(
            &run.result,
            expected,
            "{}: the plugin returned something else than the recorded step",
            path.display()
        );
    }
    run
}
