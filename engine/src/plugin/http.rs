//! The wasi:http hooks of a step: an outgoing request goes out only when its origin is granted
//! (a redirect the plugin follows is a new request, checked again); header values of the form
//! `{{secret:NAME}}` are filled with granted secrets here, so plugins never see secret values;
//! timeouts are bounded by the step's deadline; response bodies are capped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::state::StepContext;

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

impl HttpHooks {
    fn check(&self, request: &mut http::Request<WasiBody>) -> Result<(), Error> {
        let ctx = &self.ctx;
        let Some(origin) = origin_of(request.uri()) else {
            return Err(Error::HttpRequestUriInvalid);
        };
        let granted = ctx.caps.http.contains(&origin);
        if !granted {
            if let Err(d) = ctx.caps.check_http(&origin) {
                ctx.denied(d);
            }
            return Err(Error::HttpRequestDenied);
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
                ctx.denied(d);
                return Err(Error::HttpRequestDenied);
            }
            let Ok(secret) = std::env::var(&name) else {
                ctx.log.system(format!(
                    "[nestr: secret `{name}` is granted but not set in nestr's environment; request refused]"
                ));
                return Err(Error::HttpRequestDenied);
            };
            let Ok(mut filled) = http::HeaderValue::from_str(&secret) else {
                ctx.log.system(format!(
                    "[nestr: secret `{name}` cannot be sent in a header; request refused]"
                ));
                return Err(Error::HttpRequestDenied);
            };
            filled.set_sensitive(true);
            *value = filled;
        }
        Ok(())
    }

    fn options(&self, options: Option<RequestOptions>) -> RequestOptions {
        let left = self
            .ctx
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
