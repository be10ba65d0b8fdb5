//! A small blocking HTTP client over `wasi:http/outgoing-handler`: one request, one response,
//! a deadline for the whole exchange, and a cap on the body it keeps.
//!
//! The engine lets a request through only to granted origins and answers others with
//! `HTTP-request-denied`; it does not follow redirects, so neither does this client. Header
//! values of the form `{{secret:NAME}}` are sent as written and filled in by the engine.
//!
//! Resource order matters to the host: a child (a pollable, a stream) is always dropped before
//! the resource it came from, which the scoping below guarantees.

use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, HeaderError, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasi::io::poll::{self, Pollable};

use crate::url::Url;

/// The most of a response body kept; the rest is not read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The largest write `blocking-write-and-flush` accepts at once.
const WRITE_CHUNK_BYTES: usize = 4096;

/// One request to send.
pub struct Request<'a> {
    pub method: &'a Method,
    pub url: &'a Url,
    pub headers: &'a [(String, String)],
    /// Sent when not empty.
    pub body: &'a [u8],
}

/// What the server answered.
pub struct Response {
    pub status: u16,
    /// The first `Location` header, for redirects.
    pub location: Option<String>,
    /// At most [`MAX_BODY_BYTES`]; what arrived before the deadline.
    pub body: Vec<u8>,
}

/// Why no response came back.
pub enum Failure {
    /// The engine refused the request: the origin (or a `{{secret:NAME}}` in a header) is not
    /// granted.
    Denied,
    /// No answer before the deadline.
    TimedOut,
    /// A header the host does not accept; the message names it.
    BadHeader(String),
    /// Anything else (DNS, connection, TLS, protocol), in words.
    Other(String),
}

/// Nanoseconds on the monotonic clock; deadlines are instants on it.
pub fn now() -> u64 {
    monotonic_clock::now()
}

/// Parses a method name: the standard ones in any case, others as written.
pub fn method(name: &str) -> Result<Method, String> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)) =>
        {
            Method::Other(name.to_string())
        }
        _ => {
            return Err(format!(
                "`{name}` is not an HTTP method; use e.g. \"POST\" or \"GET\""
            ));
        }
    })
}

/// The name of a method as sent.
pub fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(name) => name,
    }
}

/// Sends `req` and waits for the answer until `deadline` (an instant from [`now`]).
pub fn send(req: &Request, deadline: u64) -> Result<Response, Failure> {
    let headers = Fields::new();
    for (name, value) in req.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| bad_header(name, e))?;
    }
    let request = OutgoingRequest::new(headers);
    let scheme = if req.url.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let authority = req.url.authority();
    let set = [
        request.set_method(req.method),
        request.set_scheme(Some(&scheme)),
        request.set_authority(Some(&authority)),
        request.set_path_with_query(Some(&req.url.path_and_query)),
    ];
    if set.iter().any(Result::is_err) {
        return Err(Failure::Other(format!(
            "the host refused the method, scheme, authority `{authority}` or path of the request"
        )));
    }

    // The host's own timeouts, so that it gives up when we do; a host that does not support one
    // of them refuses the setting, which is harmless since we also wait with a deadline.
    let options = RequestOptions::new();
    let remaining = Some(deadline.saturating_sub(now()).max(1));
    let _ = options.set_connect_timeout(remaining);
    let _ = options.set_first_byte_timeout(remaining);
    let _ = options.set_between_bytes_timeout(remaining);

    let body = request
        .body()
        .map_err(|()| Failure::Other("the host gave no request body to write".into()))?;
    let future = outgoing_handler::handle(request, Some(options)).map_err(classify)?;
    // When the write or the finish fails, the request failed and the response says why; when a
    // response arrives anyway, it is the server's answer and wins.
    write_body(&body, req.body);
    let _ = OutgoingBody::finish(body, None);

    let response = loop {
        if !wait(&future.subscribe(), deadline) {
            return Err(Failure::TimedOut);
        }
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(code))) => return Err(classify(code)),
            Some(Err(())) => return Err(Failure::Other("the response was already taken".into())),
            None => {} // Not ready after all: wait again.
        }
    };
    drop(future);

    let status = response.status();
    let location = {
        let headers = response.headers();
        headers
            .get("location")
            .into_iter()
            .next()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let body = read_body(&response, deadline);
    Ok(Response {
        status,
        location,
        body,
    })
}

/// Writes the request body through the body's output stream, stopping at the first error: a
/// failed write means a failed request, and the response future then says why.
fn write_body(body: &OutgoingBody, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let Ok(stream) = body.write() else { return };
    for chunk in bytes.chunks(WRITE_CHUNK_BYTES) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
}

/// Reads the response body up to [`MAX_BODY_BYTES`], the deadline or a read error, whichever
/// comes first. The status has arrived and decides the outcome; the body only adds an excerpt,
/// so a body cut short is kept as it is.
fn read_body(response: &IncomingResponse, deadline: u64) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = response.consume() else {
        return body;
    };
    let Ok(stream) = incoming.stream() else {
        return body;
    };
    while body.len() < MAX_BODY_BYTES {
        let want = (MAX_BODY_BYTES - body.len()).min(64 * 1024) as u64;
        match stream.read(want) {
            Ok(chunk) if chunk.is_empty() => {
                if !wait(&stream.subscribe(), deadline) {
                    break;
                }
            }
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(_) => break, // Closed at the end of the body, or the connection failed.
        }
    }
    body
}

/// Blocks until `pollable` is ready (true) or the deadline passes (false).
fn wait(pollable: &Pollable, deadline: u64) -> bool {
    if pollable.ready() {
        return true;
    }
    let timer = monotonic_clock::subscribe_instant(deadline);
    poll::poll(&[pollable, &timer]).contains(&0)
}

/// A header the host refused, naming it.
fn bad_header(name: &str, e: HeaderError) -> Failure {
    Failure::BadHeader(match e {
        HeaderError::InvalidSyntax => {
            format!(
                "header `{name}` has an invalid name or value (no control characters or newlines)"
            )
        }
        HeaderError::Forbidden => format!("header `{name}` may not be set by a plugin; remove it"),
        HeaderError::Immutable => format!("header `{name}` could not be set"),
    })
}

/// Turns a wasi:http error code into a [`Failure`] with a readable reason.
fn classify(code: ErrorCode) -> Failure {
    let text = match code {
        ErrorCode::HttpRequestDenied => return Failure::Denied,
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => return Failure::TimedOut,
        ErrorCode::DnsTimeout => "the DNS lookup timed out".to_string(),
        ErrorCode::DnsError(p) => match p.rcode {
            Some(rcode) => format!("the DNS lookup failed ({rcode})"),
            None => "the DNS lookup failed".to_string(),
        },
        ErrorCode::DestinationNotFound => "the host name does not resolve".to_string(),
        ErrorCode::DestinationUnavailable => "the server is unavailable".to_string(),
        ErrorCode::DestinationIpProhibited => "the server's IP address is prohibited".to_string(),
        ErrorCode::DestinationIpUnroutable => "the server's IP address is unroutable".to_string(),
        ErrorCode::ConnectionRefused => "the connection was refused".to_string(),
        ErrorCode::ConnectionTerminated => "the server closed the connection".to_string(),
        ErrorCode::ConnectionLimitReached => "too many open connections".to_string(),
        ErrorCode::TlsProtocolError => "the TLS handshake failed".to_string(),
        ErrorCode::TlsCertificateError => "the server's TLS certificate is not valid".to_string(),
        ErrorCode::TlsAlertReceived(p) => match p.alert_message {
            Some(message) => format!("the server sent a TLS alert: {message}"),
            None => "the server sent a TLS alert".to_string(),
        },
        ErrorCode::HttpResponseIncomplete => "the response was incomplete".to_string(),
        ErrorCode::HttpProtocolError => "the server broke the HTTP protocol".to_string(),
        ErrorCode::InternalError(Some(message)) => message,
        other => format!("{other:?}")
            .trim_start_matches("ErrorCode::")
            .to_string(),
    };
    Failure::Other(text)
}
