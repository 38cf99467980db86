//! The demo storefront and the browser SDK, served from the binary (open
//! routes, `http.storefront`): `/` and the shop's pages (`/p/{id}`,
//! `/c/{category}`, `/cart`, `/search`) answer `web/store/index.html`;
//! `/store/*` the page's script, styles and catalog; `/sdk/*` the SDK
//! (`nextbest.js`, `nextbest.global.js`, `nextbest.d.ts`). The files are
//! compiled in (`include_str!`), so the server needs no folder at run time
//! and works from any working directory; there is no build step for the
//! page. Nothing here reads a request body or the store.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    body: &'static str,
    content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &str = include_str!("../../web/store/index.html");
const FAVICON: &str = include_str!("../../web/store/favicon.svg");

/// The files under `/store/`.
const STORE: [Asset; 4] = [
    Asset {
        name: "app.js",
        body: include_str!("../../web/store/app.js"),
        content_type: JS,
    },
    Asset {
        name: "images.js",
        body: include_str!("../../web/store/images.js"),
        content_type: JS,
    },
    Asset {
        name: "style.css",
        body: include_str!("../../web/store/style.css"),
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        name: "catalog.jsonl",
        body: include_str!("../../web/store/catalog.jsonl"),
        content_type: "application/x-ndjson; charset=utf-8",
    },
];

/// The files under `/sdk/`.
const SDK: [Asset; 3] = [
    Asset {
        name: "nextbest.js",
        body: include_str!("../../web/sdk/nextbest.js"),
        content_type: JS,
    },
    Asset {
        name: "nextbest.global.js",
        body: include_str!("../../web/sdk/nextbest.global.js"),
        content_type: JS,
    },
    Asset {
        name: "nextbest.d.ts",
        body: include_str!("../../web/sdk/nextbest.d.ts"),
        content_type: "text/plain; charset=utf-8",
    },
];

/// What the page may load: its own scripts, styles and API (the stream
/// included), SVG pictures inline.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The storefront's routes (merged into the open group by `api::router`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/cart", get(page))
        .route("/search", get(page))
        .route("/p/{id}", get(page))
        .route("/c/{category}", get(page))
        .route("/favicon.ico", get(favicon))
        .route("/store/{file}", get(store_file))
        .route("/sdk/{file}", get(sdk_file))
}

/// The shop's one HTML page; its script draws the page the address names.
async fn page() -> Response {
    let mut resp = serve(INDEX, "text/html; charset=utf-8");
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// Browsers ask every origin for one; an SVG (the logo) answers.
async fn favicon() -> Response {
    serve(FAVICON, "image/svg+xml")
}

async fn store_file(Path(file): Path<String>) -> Result<Response, ApiError> {
    find(&STORE, &file)
}

async fn sdk_file(Path(file): Path<String>) -> Result<Response, ApiError> {
    let mut resp = find(&SDK, &file)?;
    // the SDK may be loaded by a shop on another origin
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(resp)
}

fn find(assets: &[Asset], file: &str) -> Result<Response, ApiError> {
    assets
        .iter()
        .find(|a| a.name == file)
        .map(|a| serve(a.body, a.content_type))
        .ok_or_else(|| ApiError::NotFound(format!("no file `{file}` here")))
}

fn serve(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // small files, changed only with the binary: revalidate each load
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files() {
        for path in ["/store/app.js", "/store/style.css"] {
            assert!(INDEX.contains(path), "index.html loads {path}");
        }
        let app = STORE[0].body;
        assert!(app.contains("from \"/sdk/nextbest.js\""));
        assert!(app.contains("from \"/store/images.js\""));
        assert!(app.contains("/store/catalog.jsonl"));
        assert!(STORE.iter().all(|a| !a.body.is_empty()));
        assert!(SDK.iter().all(|a| !a.body.is_empty()));
    }
}
