//! CORS: which origins browsers may call the API from. An allowlist
//! (`security.cors_origins`) answers preflights and adds
//! `Access-Control-Allow-Origin` for those origins only (methods GET, POST,
//! PUT; headers `content-type`, `authorization`, `x-api-key`,
//! `x-request-id`; `x-request-id` and `retry-after` exposed). Without one
//! (the default) no CORS header is sent: browsers let only pages of the
//! server's own origin (the storefront at `/`) read its answers. `["*"]`
//! allows every origin (`CorsLayer::permissive`), for trying the API from a
//! page served elsewhere.

use axum::http::{header, HeaderName, HeaderValue, Method, Uri};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// An origin in `security.cors_origins` that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "security.cors_origins: `{0}` is not an origin like `https://shop.example` or \
     `http://localhost:3000` (scheme and host, an optional port, no path)"
)]
pub struct CorsError(pub String);

/// The CORS layer of `origins` (empty → same origin only, `["*"]` → any).
pub fn layer(origins: &[String]) -> Result<CorsLayer, CorsError> {
    match origins {
        [] => return Ok(CorsLayer::new()),
        [any] if any == "*" => return Ok(CorsLayer::permissive()),
        _ => {}
    }
    let list = origins
        .iter()
        .map(|o| origin(o).ok_or_else(|| CorsError(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let request_id = HeaderName::from_static("x-request-id");
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            request_id.clone(),
        ])
        .expose_headers([request_id, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600)))
}

/// How `origins` reads in the start-up summary.
pub fn describe(origins: &[String]) -> String {
    match origins {
        [] => "same origin only".into(),
        [any] if any == "*" => "any origin".into(),
        list => format!("{} origin(s)", list.len()),
    }
}

/// `scheme://host[:port]` as a browser sends it in `Origin`.
fn origin(text: &str) -> Option<HeaderValue> {
    let uri: Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?;
    // `Uri` reports the empty path of `https://host` as "/"
    let has_path = uri
        .path_and_query()
        .is_some_and(|p| !matches!(p.as_str(), "" | "/"));
    let plain = matches!(scheme, "http" | "https")
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && !has_path
        && !text.ends_with('/');
    plain.then(|| HeaderValue::from_str(text).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        for ok in ["https://shop.example", "http://localhost:3000"] {
            assert!(origin(ok).is_some(), "{ok}");
        }
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/app",
            "*",
            "ftp://x",
        ] {
            assert!(origin(bad).is_none(), "{bad}");
        }
        assert!(layer(&["https://a.example".into(), "nope".into()]).is_err());
        assert!(layer(&["*".into()]).is_ok(), "\"*\" alone: any origin");
        assert!(layer(&["*".into(), "https://a.example".into()]).is_err());
        assert_eq!(describe(&[]), "same origin only");
    }
}
