//! The web dashboard, served by `nestr serve` beside the API: one HTML page per view (`/`,
//! `/graph`, `/services/{name}`, `/runs`, `/runs/{id}`), rendered here with the page's layout,
//! navigation and title, and the static modules and style sheet it loads, embedded in the binary
//! from `engine/ui/` and served under `/ui/{version}/` (the version is a digest of the files, so
//! they can be cached for good). The pages carry no workspace data: their scripts read the same
//! JSON API and event streams any client does, with the token the user entered (or none in local
//! mode), so nothing the dashboard shows or does is unavailable over the API. Scripts and styles
//! come only from this server (a strict CSP: no inline script or style, no `eval`).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};

/// The dashboard's static files.
static UI: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ui");

/// The policy of the dashboard's pages: scripts, styles, images and API calls from this server
/// only; nothing inline, no `eval`, no frames, forms post only here.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Every embedded file with its path, in path order.
pub fn files() -> Vec<(&'static str, &'static [u8])> {
    fn walk(dir: &'static Dir<'static>, out: &mut Vec<(&'static str, &'static [u8])>) {
        for f in dir.files() {
            if let Some(p) = f.path().to_str() {
                out.push((p, f.contents()));
            }
        }
        for d in dir.dirs() {
            walk(d, out);
        }
    }
    let mut out = Vec::new();
    walk(&UI, &mut out);
    out.sort_by_key(|(p, _)| *p);
    out
}

/// A digest of every file: the `{version}` of their URLs.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut h = Sha256::new();
        for (path, bytes) in files() {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(bytes);
        }
        hex::encode(&h.finalize()[..6])
    })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("html") => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

/// `GET /ui/{version}/{file}`: an embedded file. Under the current version it may be cached
/// for good; under another (a page loaded before an upgrade) it is served, not cached.
pub async fn asset(Path((ver, file)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let Some(f) = UI.get_file(&file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let current = ver == version();
    let etag = format!("\"{}-{}\"", version(), file.len());
    if current
        && headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut res = f.contents().into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if current {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    res
}

/// `module` and every module it imports, directly or not (`import … from './x.js'`), in the
/// order found: what a page preloads, so that its modules are fetched at once rather than one
/// level of imports after another.
fn module_closure(module: &str) -> Vec<String> {
    let mut out = vec![module.to_string()];
    let mut i = 0;
    while let Some(m) = out.get(i).cloned() {
        i += 1;
        let Some(text) = UI.get_file(&m).and_then(|f| f.contents_utf8()) else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("import ")) {
            let dep = line
                .rsplit_once("from './")
                .and_then(|(_, rest)| rest.split_once('\''))
                .map(|(name, _)| name.to_string());
            if let Some(dep) = dep
                && !out.contains(&dep)
            {
                out.push(dep);
            }
        }
    }
    out
}

/// Text for HTML, escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The views of the dashboard: the module each loads, and its title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Overview,
    Graph,
    Service,
    Runs,
    Run,
    Environments,
}

impl View {
    fn module(self) -> &'static str {
        match self {
            View::Overview => "overview",
            View::Graph => "graph",
            View::Service => "service",
            View::Runs => "runs",
            View::Run => "run",
            View::Environments => "envs",
        }
    }

    /// The entry of the main navigation it belongs to.
    fn nav(self) -> &'static str {
        match self {
            View::Overview | View::Service => "overview",
            View::Graph => "graph",
            View::Runs | View::Run => "runs",
            View::Environments => "envs",
        }
    }
}

/// A page: the layout, its title and the argument of its URL, for its module to fill.
fn page(view: View, title: &str, arg: &str) -> Response {
    let v = version();
    let nav = [
        ("overview", "/", "Overview"),
        ("graph", "/graph", "Graph"),
        ("runs", "/runs", "Runs"),
        ("envs", "/environments", "Environments"),
    ]
    .iter()
    .map(|(key, href, label)| {
        let current = if *key == view.nav() {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    })
    .collect::<String>();
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <title>{title} · nestr</title>\n\
         <link rel=\"icon\" href=\"/ui/{v}/icon.svg\" type=\"image/svg+xml\">\n\
         <link rel=\"stylesheet\" href=\"/ui/{v}/app.css\">\n\
         <script type=\"module\" src=\"/ui/{v}/app.js\"></script>\n\
         {preload}</head>\n<body data-page=\"{module}\" data-arg=\"{arg}\">\n\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\n\
         <header class=\"top\"><a class=\"brand\" href=\"/\">nestr</a>\
         <nav aria-label=\"Main\">{nav}</nav><span id=\"who\"></span></header>\n\
         <main id=\"main\" tabindex=\"-1\"><h1>{title}</h1><p class=\"muted\" id=\"loading\">Loading…</p>\
         <noscript><p>This dashboard needs JavaScript. Everything it shows is also served as JSON \
         under <code>/api</code> (<a href=\"/api/openapi.json\">the OpenAPI document</a>).</p></noscript>\
         </main>\n</body>\n</html>\n",
        title = esc(title),
        preload = module_closure(&format!("{}.js", view.module()))
            .iter()
            .map(|m| format!("<link rel=\"modulepreload\" href=\"/ui/{v}/{m}\">\n"))
            .collect::<String>(),
        module = view.module(),
        arg = esc(arg),
    );
    html(StatusCode::OK, body)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `/`: the workspace at a glance.
pub async fn overview() -> Response {
    page(View::Overview, "Overview", "")
}

/// `/graph`: the services as a dependency graph.
pub async fn graph() -> Response {
    page(View::Graph, "Graph", "")
}

/// `/runs`: the run history.
pub async fn runs() -> Response {
    page(View::Runs, "Runs", "")
}

/// `/environments`: what runs where, the newest plans, approvals.
pub async fn environments() -> Response {
    page(View::Environments, "Environments", "")
}

/// `/runs/{id}`: a run, its timeline, steps and log.
pub async fn run(Path(id): Path<String>) -> Response {
    page(View::Run, &format!("Run {id}"), &id)
}

/// `/services/{name}`: a service.
pub async fn service(Path(name): Path<String>) -> Response {
    page(View::Service, &name, &name)
}

/// A path that is neither a page, a file of the dashboard nor an API route, asked for by a
/// browser: a page that says so.
pub fn not_found_page(path: &str) -> Response {
    let v = version();
    html(
        StatusCode::NOT_FOUND,
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
             <meta name=\"color-scheme\" content=\"light dark\"><title>Not found · nestr</title>\
             <link rel=\"stylesheet\" href=\"/ui/{v}/app.css\"></head>\n<body><main id=\"main\">\
             <h1>Not found</h1><p>Nothing is at <code>{}</code>. Go to the \
             <a href=\"/\">overview</a>.</p></main></body>\n</html>\n",
            esc(path)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget of the issue: all scripts and styles together at most 60 KB, uncompressed.
    #[test]
    fn scripts_and_styles_stay_within_60_kb() {
        let total: usize = files()
            .iter()
            .filter(|(p, _)| p.ends_with(".js") || p.ends_with(".css"))
            .map(|(_, b)| b.len())
            .sum();
        assert!(
            total > 10_000,
            "the dashboard's files are embedded: {total}"
        );
        assert!(
            total <= 60 * 1000,
            "JS + CSS is {total} bytes, over the 60 KB budget"
        );
    }

    #[test]
    fn a_page_escapes_what_comes_from_its_url() {
        let body = format!("{:?}", esc("<script>alert(\"x\")</script>&'"));
        assert!(!body.contains('<') && !body.contains('>'), "{body}");
    }

    #[test]
    fn a_page_preloads_its_module_and_what_it_imports() {
        let run = module_closure("run.js");
        for m in ["run.js", "app.js", "log.js", "ansi.js", "stream.js"] {
            assert!(run.iter().any(|x| x == m), "{m} in {run:?}");
        }
        assert_eq!(run.len(), 5, "{run:?}");
    }

    /// Every module a page names exists, and no file loads anything from another origin.
    #[test]
    fn pages_load_only_embedded_files() {
        for v in [
            View::Overview,
            View::Graph,
            View::Service,
            View::Runs,
            View::Run,
        ] {
            assert!(
                UI.get_file(format!("{}.js", v.module())).is_some(),
                "{}",
                v.module()
            );
        }
        for (path, bytes) in files() {
            let text = String::from_utf8_lossy(bytes).replace("http://www.w3.org/", "");
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
                "{path} names another origin"
            );
        }
    }
}
