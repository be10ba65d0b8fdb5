//! A step's HTTP: the contract's own `http` interface ([`send`]) and the wasi:http hooks, both
//! through one check ([`admit`]): a request goes out only when its origin is granted (a
//! redirect is a new request, checked again); header values of the form `{{secret:NAME}}` are
//! filled with granted secrets here, so plugins never see secret values; timeouts are bounded by
//! the step's deadline; response bodies are capped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::bindings::nestr::plugin::http as wit;
use super::bindings::types;
use super::caps::{Denial, MAX_ECHO, clip};
use super::exec::failed;
use super::state::{StepContext, StepState};

/// Largest response body a plugin may receive.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Longest a request may wait for a connection or between bytes.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The hooks, holding the step context.
pub struct HttpHooks {
    pub ctx: Arc<StepContext>,
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

/// The origin a request's URI names, in the form granted origins are normalised to
/// ([`crate::manifest::normalize_origin`]): lower case, punycode, default ports dropped.
pub fn origin_of(uri: &http::Uri) -> Option<String> {
    let url = url::Url::parse(&uri.to_string()).ok()?;
    crate::manifest::origin_of_url(&url)
}

/// Why [`admit`] refused a request.
pub enum Refusal {
    /// Not granted (recorded as the engine's refusal).
    Denied(Denial),
    /// The URL names no origin.
    BadUrl,
    /// A granted secret that cannot be sent; the step log says why.
    Secret(String),
}

/// Lets a request out, or not: its origin must be granted, and each header value written
/// `{{secret:NAME}}` is replaced with the granted secret `NAME` (marked sensitive).
fn admit<B>(ctx: &StepContext, request: &mut http::Request<B>) -> Result<String, Refusal> {
    let Some(origin) = origin_of(request.uri()) else {
        return Err(Refusal::BadUrl);
    };
    if !ctx.caps.http.contains(&origin) {
        if let Err(d) = ctx.caps.check_http(&origin) {
            ctx.record_denial(&d);
            return Err(Refusal::Denied(d));
        }
        return Err(Refusal::BadUrl);
    }
    for value in request.headers_mut().values_mut() {
        let Some(name) = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("{{secret:"))
            .and_then(|v| v.strip_suffix("}}"))
            .map(str::to_owned)
        else {
            continue;
        };
        if let Err(d) = ctx.caps.check_secret(&name) {
            ctx.record_denial(&d);
            return Err(Refusal::Denied(d));
        }
        let Ok(secret) = std::env::var(&name) else {
            let why = format!(
                "secret `{name}` is granted but not set in nestr's environment; request refused"
            );
            ctx.log.system(format!("[nestr: {why}]"));
            return Err(Refusal::Secret(why));
        };
        let Ok(mut filled) = http::HeaderValue::from_str(&secret) else {
            let why = format!("secret `{name}` cannot be sent in a header; request refused");
            ctx.log.system(format!("[nestr: {why}]"));
            return Err(Refusal::Secret(why));
        };
        filled.set_sensitive(true);
        *value = filled;
    }
    Ok(origin)
}

/// Timeouts no longer than what is left of the step (and at most [`MAX_WAIT`]).
fn bounded(ctx: &StepContext, options: Option<RequestOptions>) -> RequestOptions {
    let left = ctx
        .deadline
        .saturating_duration_since(Instant::now())
        .min(MAX_WAIT);
    let bound = |d: Option<Duration>| Some(d.map_or(left, |d| d.min(left)));
    let o = options.unwrap_or(RequestOptions {
        connect_timeout: None,
        first_byte_timeout: None,
        between_bytes_timeout: None,
    });
    RequestOptions {
        connect_timeout: bound(o.connect_timeout),
        first_byte_timeout: bound(o.first_byte_timeout),
        between_bytes_timeout: bound(o.between_bytes_timeout),
    }
}

impl HttpHooks {
    fn check(&self, request: &mut http::Request<WasiBody>) -> Result<(), Error> {
        match admit(&self.ctx, request) {
            Ok(_) => Ok(()),
            Err(Refusal::BadUrl) => Err(Error::HttpRequestUriInvalid),
            Err(Refusal::Denied(_) | Refusal::Secret(_)) => Err(Error::HttpRequestDenied),
        }
    }

    fn options(&self, options: Option<RequestOptions>) -> RequestOptions {
        bounded(&self.ctx, options)
    }
}

impl wit::Host for StepState {
    async fn send(&mut self, request: wit::Request) -> Result<wit::Response, types::Error> {
        let ctx = self.ctx.clone();
        send(&ctx, request).await
    }
}

/// The contract's `http.send`: one request through [`admit`], its response read up to
/// [`MAX_RESPONSE_BYTES`] within the step's deadline (and the request's own timeout).
pub async fn send(ctx: &StepContext, r: wit::Request) -> Result<wit::Response, types::Error> {
    let Some(tape) = &ctx.tape else {
        return send_checked(ctx, r).await;
    };
    let result = send_checked(ctx, r.clone()).await;
    tape.http(&r, &result);
    result
}

async fn send_checked(ctx: &StepContext, r: wit::Request) -> Result<wit::Response, types::Error> {
    if ctx.cancel.is_cancelled() {
        return Err(failed("the step was cancelled"));
    }
    let shown = clip(&r.url, MAX_ECHO);
    let own_timeout = r.timeout_ms.map(Duration::from_millis);
    let method = http::Method::from_bytes(r.method.as_bytes()).map_err(|_| {
        failed(format!(
            "`{}` is not an HTTP method",
            clip(&r.method, MAX_ECHO)
        ))
    })?;
    let uri: http::Uri = r
        .url
        .parse()
        .map_err(|e| failed(format!("`{shown}` is not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(failed(format!(
            "`{shown}` is not an absolute http:// or https:// URL"
        )));
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in &r.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| failed(format!("`{}` is not a header name", clip(name, MAX_ECHO))))?;
        let value = http::HeaderValue::from_str(value).map_err(|_| {
            failed(format!(
                "the value of header `{name}` is not a valid header value"
            ))
        })?;
        builder = builder.header(name, value);
    }
    let body: WasiBody = http_body_util::Full::new(bytes::Bytes::from(r.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut request = builder
        .body(body)
        .map_err(|e| failed(format!("cannot build the request to `{shown}`: {e}")))?;
    let origin = match admit(ctx, &mut request) {
        Ok(origin) => origin,
        // Recorded by `admit` already.
        Err(Refusal::Denied(d)) => return Err(super::state::denial_error(d)),
        Err(Refusal::BadUrl) => return Err(failed(format!("`{shown}` names no origin"))),
        Err(Refusal::Secret(why)) => return Err(failed(why)),
    };
    let own = |d: Option<Duration>| match (d, own_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut options = bounded(ctx, None);
    options.connect_timeout = own(options.connect_timeout);
    options.first_byte_timeout = own(options.first_byte_timeout);
    options.between_bytes_timeout = own(options.between_bytes_timeout);
    let exchange = async {
        let (response, io) =
            wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
        let io = tokio::spawn(io);
        let (parts, body) = response.into_parts();
        let mut body = std::pin::pin!(body);
        let (mut kept, mut truncated) = (Vec::new(), false);
        while let Some(frame) = body.as_mut().frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let room = MAX_RESPONSE_BYTES.saturating_sub(kept.len());
            if data.len() > room {
                kept.extend_from_slice(&data[..room]);
                truncated = true;
                break;
            }
            kept.extend_from_slice(&data);
        }
        io.abort();
        Ok::<_, Error>((parts, kept, truncated))
    };
    // The whole exchange ends with the step, or at the request's own timeout.
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let limit = own_timeout.map_or(left, |d| d.min(left));
    let (parts, body, truncated) = match tokio::time::timeout(limit, exchange).await {
        Err(_) => {
            return Err(failed(format!(
                "no complete answer from {origin} within {} ms",
                limit.as_millis()
            )));
        }
        Ok(Err(e)) => return Err(failed(format!("the request to {origin} failed: {e}"))),
        Ok(Ok(r)) => r,
    };
    let masker = ctx.log.masker();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                masker.mask(&String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    // A server that echoes a filled-in secret does not hand it to the plugin.
    let body = match String::from_utf8(body) {
        Ok(text) => masker.mask(&text).into_bytes(),
        Err(e) => e.into_bytes(),
    };
    Ok(wit::Response {
        status: parts.status.as_u16(),
        headers,
        body,
        truncated,
    })
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let checked = self.check(&mut request);
        let options = self.options(options);
        Box::new(async move {
            checked?;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let response = response.map(|body| {
                http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                    .map_err(|_| Error::HttpResponseBodySize(Some(MAX_RESPONSE_BYTES as u64)))
                    .boxed_unsync()
            });
            Ok((
                response,
                Box::new(io) as Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_default_ports() {
        let o = |s: &str| origin_of(&s.parse::<http::Uri>().expect("uri"));
        assert_eq!(
            o("https://Example.com/a?b").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(
            o("https://example.com:443/").as_deref(),
            Some("https://example.com")
        );
        assert_eq!(
            o("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            o("https://xn--bcher-kva.example/").as_deref(),
            Some("https://xn--bcher-kva.example")
        );
    }
}
