//! Serving an unpacked Jitsi Meet web build as the stock nginx site does (docs/web.md):
//! room URLs answered with index.html, its server-side includes, the static folders with
//! long caching for versioned URLs, `external_api.js`, tenants (`/<tenant>/<room>`).

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// Folders served as files (nginx's `location ~ ^/(libs|css|...)/(.*)$`).
const STATIC_DIRS: &[&str] = &[
    "libs",
    "css",
    "static",
    "images",
    "fonts",
    "lang",
    "sounds",
    "connection_optimization",
    ".well-known",
    "transcripts",
];

/// Room and tenant names: one path segment without `/ ? & : ' "` (and not a dot name).
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '?', '&', ':', '\'', '"', '\\'])
}

/// Variables an `<!--# echo -->` may print.
pub struct SsiVars<'a> {
    /// `"<tenant>."` or empty.
    pub subdomain: &'a str,
    /// `"<tenant>/"` or empty.
    pub subdir: &'a str,
    pub http_host: &'a str,
}

/// nginx SSI as index.html uses it: `include virtual` (missing files include nothing, as nginx
/// only logs them) and `echo var`. `resolve` supplies generated files such as config.js.
pub fn expand_ssi(
    text: &str,
    vars: &SsiVars<'_>,
    resolve: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> String {
    let mut out = String::with_capacity(text.len() + 4096);
    let mut rest = text;
    while let Some(i) = rest.find("<!--#") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 5..];
        let Some(end) = after.find("-->") else {
            out.push_str(&rest[i..]);
            return out;
        };
        let directive = after[..end].trim();
        rest = &after[end + 3..];
        let attr = |name: &str| -> Option<String> {
            let key = format!("{name}=\"");
            let s = directive.find(&key)? + key.len();
            let e = directive[s..].find('"')? + s;
            Some(directive[s..e].to_string())
        };
        if directive.starts_with("include") {
            if depth < 3
                && let Some(path) = attr("virtual")
                && let Some(content) = resolve(&path)
            {
                out.push_str(&expand_ssi(&content, vars, resolve, depth + 1));
            }
        } else if directive.starts_with("echo") {
            let v = match attr("var").as_deref() {
                Some("subdomain") => Some(vars.subdomain.to_string()),
                Some("subdir") => Some(vars.subdir.to_string()),
                Some("http_host") => Some(vars.http_host.to_string()),
                _ => None,
            };
            match v {
                Some(v) if !v.is_empty() => out.push_str(&v),
                _ => out.push_str(&attr("default").unwrap_or_default()),
            }
        }
    }
    out.push_str(rest);
    out
}

/// Read a file under `root` named by a site path, refusing anything outside it.
fn read_under(root: &Path, path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|s| s == ".." || s.is_empty()) {
        return None;
    }
    std::fs::read_to_string(root.join(rel)).ok()
}

pub struct WebRoot {
    pub dir: PathBuf,
}

pub enum Target {
    /// index.html with this tenant (or none).
    Index(Option<String>),
    /// A file under the root, at this site path.
    File(String),
    NotFound,
}

impl WebRoot {
    /// What a request path is, the way the stock nginx site decides it.
    pub fn route(&self, path: &str) -> Target {
        if path == "/" || path == "/index.html" {
            return Target::Index(None);
        }
        if path == "/external_api.js" {
            return Target::File("/libs/external_api.min.js".into());
        }
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if segs.contains(&"..") {
            return Target::NotFound;
        }
        if STATIC_DIRS.contains(&segs[0]) {
            return Target::File(path.to_string());
        }
        if segs.len() == 1 {
            let f = self.dir.join(segs[0]);
            if f.is_file() {
                return Target::File(path.to_string());
            }
            return if valid_segment(segs[0]) {
                Target::Index(None)
            } else {
                Target::NotFound
            };
        }
        // /<tenant>/<anything>: the tenant prefix is dropped for files, kept for rooms.
        if segs.len() >= 2 && valid_segment(segs[0]) {
            let inner = format!("/{}", segs[1..].join("/"));
            return match self.route(&inner) {
                Target::Index(None) => Target::Index(Some(segs[0].to_string())),
                Target::Index(Some(_)) => Target::NotFound,
                other => other,
            };
        }
        Target::NotFound
    }

    /// index.html with its includes expanded.
    pub fn index(&self, tenant: Option<&str>, host: &str, config_js: &str) -> Response {
        if read_under(&self.dir, "/index.html").is_none() {
            return (
                StatusCode::NOT_FOUND,
                "index.html missing from the web root\n",
            )
                .into_response();
        }
        self.page("/index.html", tenant, host, config_js)
    }

    /// An HTML page of the root (index.html, static/dialInInfo.html, …) with its includes
    /// expanded, as nginx's `ssi on` does for the whole site.
    pub fn page(
        &self,
        site_path: &str,
        tenant: Option<&str>,
        host: &str,
        config_js: &str,
    ) -> Response {
        let Some(index) = read_under(&self.dir, site_path) else {
            return self.not_found();
        };
        let subdomain = tenant.map(|t| format!("{t}.")).unwrap_or_default();
        let subdir = tenant.map(|t| format!("{t}/")).unwrap_or_default();
        let vars = SsiVars {
            subdomain: &subdomain,
            subdir: &subdir,
            http_host: host,
        };
        let dir = self.dir.clone();
        let resolve = move |p: &str| -> Option<String> {
            match p.trim_start_matches('/') {
                "config.js" => Some(config_js.to_string()),
                other => read_under(&dir, other),
            }
        };
        let html = expand_ssi(&index, &vars, &resolve, 0);
        let mut r = (StatusCode::OK, html).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }

    /// A static file, with nginx's headers: CORS on the static folders, a year of caching
    /// for versioned (`?v=`) URLs.
    pub async fn file(&self, site_path: &str, req: Request<Body>) -> Response {
        let versioned = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("v=")));
        let uri = match site_path.parse::<axum::http::Uri>() {
            Ok(u) => u,
            Err(_) => return self.not_found(),
        };
        let mut req = req;
        *req.uri_mut() = uri;
        let svc = ServeDir::new(&self.dir).precompressed_gzip();
        let mut r = match svc.oneshot(req).await {
            Ok(r) => r.map(Body::new),
            Err(_) => return self.not_found(),
        };
        if r.status() == StatusCode::NOT_FOUND {
            return self.not_found();
        }
        let h = r.headers_mut();
        if let Some(ct) = mime_override(site_path) {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        if versioned {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000"),
            );
        }
        r
    }

    pub fn not_found(&self) -> Response {
        let body =
            read_under(&self.dir, "/static/404.html").unwrap_or_else(|| "not found\n".into());
        let mut r = (StatusCode::NOT_FOUND, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    }
}

/// Types nginx's site adds beyond the usual ones.
fn mime_override(path: &str) -> Option<&'static str> {
    if path.ends_with(".wasm") {
        Some("application/wasm")
    } else if path.ends_with(".wav") {
        Some("audio/wav")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssi_includes_and_echo() {
        let vars = SsiVars {
            subdomain: "t1.",
            subdir: "t1/",
            http_host: "meet.example.com",
        };
        let resolve = |p: &str| {
            match p {
            "/config.js" => Some("var config = {muc: 'conference.<!--# echo var=\"subdomain\" default=\"\" -->meet'};".to_string()),
            "head.html" => Some("<meta x>".to_string()),
            _ => None,
        }
        };
        let html = "<head><!--#include virtual=\"head.html\" --><script><!--#include virtual=\"/config.js\" --></script><!--#include virtual=\"missing.html\" --></head><p><!--# echo var=\"nope\" default=\"dflt\" --></p>";
        let out = expand_ssi(html, &vars, &resolve, 0);
        assert_eq!(
            out,
            "<head><meta x><script>var config = {muc: 'conference.t1.meet'};</script></head><p>dflt</p>"
        );
    }

    #[test]
    fn routes_like_the_stock_site() {
        let dir = std::env::temp_dir().join(format!("meetd-webroot-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("libs")).unwrap();
        std::fs::write(dir.join("pwa-worker.js"), "x").unwrap();
        let w = WebRoot { dir: dir.clone() };
        assert!(matches!(w.route("/"), Target::Index(None)));
        assert!(matches!(w.route("/MyRoom%20x"), Target::Index(None)));
        assert!(matches!(w.route("/pwa-worker.js"), Target::File(_)));
        assert!(matches!(
            w.route("/libs/app.bundle.min.js"),
            Target::File(_)
        ));
        assert!(
            matches!(w.route("/external_api.js"), Target::File(p) if p == "/libs/external_api.min.js")
        );
        assert!(matches!(w.route("/tenant/room"), Target::Index(Some(t)) if t == "tenant"));
        assert!(matches!(w.route("/tenant/libs/x.js"), Target::File(p) if p == "/libs/x.js"));
        assert!(matches!(w.route("/a:b"), Target::NotFound));
        assert!(matches!(w.route("/../etc/passwd"), Target::NotFound));
        let _ = std::fs::remove_dir_all(dir);
    }
}
