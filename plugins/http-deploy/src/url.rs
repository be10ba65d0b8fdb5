//! The `http://` and `https://` URLs of the config (`url`, `health_url`): parsed by the `url`
//! crate (WHATWG rules: host names lower-cased and in punycode, default ports dropped, dot
//! segments resolved) into the parts a request needs, the origin the engine grants,
//! and a form safe to show in logs. Credentials are refused (they belong in a
//! `{{secret:NAME}}` header), and so is anything but an absolute http(s) URL.

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
        let Some((scheme, _)) = text.split_once("://") else {
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
        let url = url::Url::parse(text).map_err(|e| match e {
            url::ParseError::EmptyHost => "has no host".to_string(),
            url::ParseError::InvalidPort => {
                "has a port that is not a number from 1 to 65535".to_string()
            }
            url::ParseError::InvalidIpv6Address => {
                "has something other than an IPv6 address inside `[…]`".to_string()
            }
            e => format!("is not a valid URL ({e})"),
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "has credentials (user:password@) in it; send them in a header instead, \
                 e.g. headers = { Authorization = \"{{secret:DEPLOY_TOKEN}}\" }"
                    .into(),
            );
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]"),
            Some(h) => h.to_string(),
            None => return Err("has no host".into()),
        };
        if url.port() == Some(0) {
            return Err("has the port `0`, which is not a number from 1 to 65535".into());
        }
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Url {
            https,
            host,
            port: url.port(),
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
    pub fn full(&self) -> String {
        format!("{}{}", self.origin(), self.path_and_query)
    }

    /// `scheme://host[:port]`, as grants name it.
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

#[cfg(test)]
mod tests {
    use super::Url;

    #[test]
    fn parts_origin_and_display() {
        let u = Url::parse("HTTPS://API.Example.com:443/deploy/a?key=s3cret#frag").unwrap();
        assert_eq!(u.origin(), "https://api.example.com");
        assert_eq!(u.path_and_query, "/deploy/a?key=s3cret");
        assert_eq!(u.display(), "https://api.example.com/deploy/a?…");
        let v6 = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(v6.authority(), "[::1]:8080");
        assert_eq!(v6.path_and_query, "/");
    }

    #[test]
    fn refusals_name_the_fault_without_the_url() {
        for (bad, says) in [
            ("", "is empty"),
            ("ftp://h/x", "scheme `ftp`"),
            ("h/x", "not an absolute URL"),
            ("https://u:p@h/x?k=s3cret", "credentials"),
            ("https://h:99999/", "port"),
            ("https://h:0/", "port `0`"),
            ("https://h x/", "percent-encode"),
        ] {
            let e = Url::parse(bad).err().unwrap_or_default();
            assert!(e.contains(says), "{bad:?} → {e:?}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
