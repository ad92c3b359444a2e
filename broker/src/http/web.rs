//! Static files of a built web app, served at `/` from `web_root` so one origin serves the
//! page, REST and WebSocket. Paths are confined to the directory; a path without a file
//! extension that matches no file gets `index.html` (client-side routes such as
//! `/auth0-landing`).

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::response::HttpResponse;

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file under `root` for a URL path, refusing anything that would leave it.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(url_path)
        .decode_utf8()
        .ok()?;
    let relative = Path::new(decoded.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let mut file = root.join(relative);
    if file.is_dir() {
        file = file.join("index.html");
    }
    if file.is_file() {
        return Some(file);
    }
    // A client-side route (no extension): the app's entry page.
    relative
        .extension()
        .is_none()
        .then(|| root.join("index.html"))
        .filter(|f| f.is_file())
}

/// Serves `url_path` from `root`, or `None` when there is no such file.
pub async fn serve(root: &Path, url_path: &str) -> Option<HttpResponse> {
    let file = resolve(root, url_path)?;
    let body = tokio::fs::read(&file).await.ok()?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
    // Vite puts content hashes in asset names; the entry page must always be fresh.
    let cache = if file.file_name().is_some_and(|n| n == "index.html") {
        "no-cache"
    } else {
        "public, max-age=3600"
    };
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root_and_routes_fall_back_to_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html>").unwrap();
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/app.js"), "x").unwrap();
        let root = dir.path();
        assert_eq!(resolve(root, "/"), Some(root.join("index.html")));
        assert_eq!(
            resolve(root, "/assets/app.js"),
            Some(root.join("assets/app.js"))
        );
        assert_eq!(
            resolve(root, "/auth0-landing"),
            Some(root.join("index.html"))
        );
        assert_eq!(resolve(root, "/missing.js"), None);
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/assets/%2e%2e/%2e%2e/x"), None);
    }
}
