//! The `http://` and `https://` URLs of the config (`url`, `health_url`): parsed into the parts
//! a wasi:http request needs, the origin the engine grants, and a form safe to show in logs.
//!
//! Deliberately small: no credentials (they belong in a `{{secret:NAME}}` header), no
//! internationalized host names (write them in punycode), no relative references.

/// An absolute `http` or `https` URL.
pub struct Url {
    pub https: bool,
    /// Lowercase host name or IP address; IPv6 addresses keep their brackets.
    pub host: String,
    /// The port when the URL names one other than the scheme's default.
    pub port: Option<u16>,
    /// `/path?query`, at least `/`; the fragment is dropped.
    pub path_and_query: String,
}

impl Url {
    /// Parses `scheme://host[:port][/path][?query][#fragment]`. The error completes a sentence
    /// that starts with the field's name ("`url` is empty") and never repeats the whole URL,
    /// whose query may hold a key.
    pub fn parse(text: &str) -> Result<Url, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "contains {c:?}; percent-encode spaces and control characters"
            ));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err("is not an absolute URL; write it as https://host/path".into());
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => {
                return Err(format!(
                    "has the scheme `{scheme}`; only http and https are supported"
                ));
            }
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(
                "has credentials (user:password@) in it; send them in a header instead, \
                 e.g. headers = { Authorization = \"{{secret:DEPLOY_TOKEN}}\" }"
                    .into(),
            );
        }
        let (host, port) = split_host_port(authority)?;
        let default_port = if https { 443 } else { 80 };
        let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
        let path_and_query = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        Ok(Url {
            https,
            host: host.to_ascii_lowercase(),
            port: port.filter(|p| *p != default_port),
            path_and_query,
        })
    }

    /// `host[:port]`, the request's authority.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// `scheme://host[:port]`, what the manifest grants under `http`.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority()
        )
    }

    /// The URL without its query (deploy hooks often carry their key there), for logs and
    /// summaries: `https://api.example.com/deploy/srv-1?…`.
    pub fn display(&self) -> String {
        match self.path_and_query.split_once('?') {
            Some((path, _)) => format!("{}{path}?…", self.origin()),
            None => format!("{}{}", self.origin(), self.path_and_query),
        }
    }
}

/// Splits `host[:port]` or `[v6]:port` and checks both parts (errors worded like [`Url::parse`]'s).
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        let Some(close) = authority.find(']') else {
            return Err("has an IPv6 address without its closing `]`".into());
        };
        let (host, after) = authority.split_at(close + 1);
        let inner = &host[1..close];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("has `{host}` where an IPv6 address belongs"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(format!(
                        "has `{after}` after the IPv6 address; expected `:port`"
                    ));
                }
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "has the host `{host}`, which is not a valid host name (letters, digits, `-`, `.`; \
             write international names in punycode)"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Some(n),
            _ => {
                return Err(format!(
                    "has the port `{p}`, which is not a number from 1 to 65535"
                ));
            }
        },
    };
    Ok((host, port))
}
