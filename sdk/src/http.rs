//! HTTP requests to granted origins, through the engine.
//!
//! ```ignore
//! let resp = nestr_sdk::http::post("https://deploy.example.com/hooks/api")
//!     .secret_header("Authorization", "DEPLOY_TOKEN")   // filled in by the engine
//!     .json(&serde_json::json!({ "commit": req.commit }))?
//!     .send()?;                                          // a refusal is Error::Denied
//! if !resp.is_success() { return Err(Error::failed(format!("deploy hook answered {}", resp.status))); }
//! ```
//!
//! The origin (`scheme://host[:port]`) must be declared in [`crate::PluginInfo::http`] and granted
//! in nestr.toml; redirects are not followed; the engine bounds every wait by the step's deadline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "crate::tape::bytes")]
    pub body: Vec<u8>,
    pub timeout_ms: Option<u64>,
}

/// A request with any method.
pub fn request(method: &str, url: &str) -> Request {
    Request {
        method: method.to_string(),
        url: url.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: None,
    }
}

/// A `GET` request.
pub fn get(url: &str) -> Request {
    request("GET", url)
}

/// A `POST` request.
pub fn post(url: &str) -> Request {
    request("POST", url)
}

/// A `PUT` request.
pub fn put(url: &str) -> Request {
    request("PUT", url)
}

/// A `DELETE` request.
pub fn delete(url: &str) -> Request {
    request("DELETE", url)
}

impl Request {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a header whose whole value is the granted secret `secret`, filled in by the engine
    /// (the plugin never sees it): a server that wants `Bearer TOKEN` needs a secret holding
    /// `Bearer TOKEN`.
    pub fn secret_header(self, name: &str, secret: &str) -> Self {
        let value = format!("{{{{secret:{secret}}}}}");
        self.header(name, &value)
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `Content-Type: application/json`.
    pub fn json<T: Serialize>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::failed(format!("cannot encode the JSON body: {e}")))?;
        Ok(self.header("Content-Type", "application/json").body(body))
    }

    /// Gives up after `d` (the step's deadline applies as well).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sends it and reads the response. A refused origin or secret is [`Error::Denied`]; no
    /// answer (connection, TLS, timeout) is [`Error::Failed`]. Any status is a response.
    pub fn send(self) -> Result<Response, Error> {
        crate::host::http(&self)
    }
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Up to 16 MiB of the body.
    #[serde(with = "crate::tape::bytes")]
    pub body: Vec<u8>,
    /// The body was longer and was cut.
    pub truncated: bool,
}

impl Response {
    /// For tests: a response with this status and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            ..Response::default()
        }
    }

    /// For tests: the same with this body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body read as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::failed(format!(
                "the response (status {}) is not the JSON expected: {e}",
                self.status
            ))
        })
    }
}
