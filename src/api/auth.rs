//! Access control of the routes, as two middleware around each group of
//! routes (`api::router`): [`identify`] finds which configured key a
//! request presents and records the [`Caller`] (its key, else its peer
//! address) for the rate limit after it; [`require`] then lets the request
//! through, or answers 401 (no key, or one not configured) or 403 (a valid
//! key of the wrong role).
//!
//! A key comes in `x-api-key` or `Authorization: Bearer`; on the WebSocket
//! route also in a `token` query parameter, since a browser cannot set
//! headers on a WebSocket. The rule ([`KeyRing`]): no key configured →
//! every route open; otherwise an admin route needs an admin key, and a
//! client route a client or admin key if any client key is configured.
//! The key itself is never logged or kept: only the configured name.

use super::ApiError;
use crate::keys::{ApiKey, KeyRing, Role};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Who sent a request: the configured key it presented, and its peer
/// address (absent when the server was not started with connect info,
/// e.g. a router called directly in a unit test).
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Option<ApiKey>,
    pub peer: Option<IpAddr>,
}

/// Where a group of routes looks for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// `x-api-key` or `Authorization: Bearer`.
    Headers,
    /// The headers, else a `token` query parameter (the WebSocket route).
    HeadersOrQuery,
}

/// The access rule of one group of routes.
#[derive(Clone)]
pub struct Gate {
    pub keys: Arc<KeyRing>,
    pub role: Role,
    pub credentials: Credentials,
}

#[derive(Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// The key a request presents, if any: `x-api-key`, else `Authorization:
/// Bearer <key>`, else (when allowed) the `token` query parameter.
fn presented(req: &Request, credentials: Credentials) -> Option<String> {
    let headers: &HeaderMap = req.headers();
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim().to_string());
        }
    }
    if credentials == Credentials::HeadersOrQuery {
        return Query::<TokenParam>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.token);
    }
    None
}

/// Records the request's [`Caller`]. Refuses nothing: [`require`] does,
/// after the rate limit has counted the caller.
pub async fn identify(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let key = if gate.keys.is_empty() {
        None
    } else {
        presented(&req, gate.credentials)
            .filter(|k| !k.is_empty())
            .and_then(|k| gate.keys.identify(k.as_bytes()).cloned())
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    req.extensions_mut().insert(Caller { key, peer });
    next.run(req).await
}

/// Lets the request through if its caller may call the gate's routes.
pub async fn require(
    State(gate): State<Gate>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.key.as_ref());
    match decide(&gate.keys, gate.role, key) {
        Ok(()) => Ok(next.run(req).await),
        Err(e) => {
            tracing::debug!(
                role = gate.role.as_str(),
                key = key.map(|k| &*k.name),
                error = %e,
                "request refused"
            );
            Err(e)
        }
    }
}

/// The access rule itself.
fn decide(keys: &KeyRing, role: Role, key: Option<&ApiKey>) -> Result<(), ApiError> {
    let needed = match role {
        Role::Admin => !keys.is_empty(),
        Role::Client => keys.has(Role::Client),
    };
    if !needed {
        return Ok(());
    }
    match key {
        None => Err(ApiError::Unauthorized(format!(
            "this route needs {} API key: send it in `x-api-key` or `Authorization: Bearer` \
             (a missing or unknown key)",
            article(role)
        ))),
        Some(k) if k.role == Role::Admin || k.role == role => Ok(()),
        Some(k) => Err(ApiError::Forbidden(format!(
            "this route needs {} API key; `{}` is {} key",
            article(role),
            k.name,
            article(k.role)
        ))),
    }
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Admin => "an admin",
        Role::Client => "a client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;
    use crate::keys::hash_hex;

    fn ring(entries: &[(&str, Role)]) -> KeyRing {
        let cfg: Vec<KeyConfig> = entries
            .iter()
            .map(|(name, role)| KeyConfig {
                name: name.to_string(),
                role: *role,
                sha256: hash_hex(name.as_bytes()),
                per_second: None,
                burst: None,
            })
            .collect();
        KeyRing::from_config(&cfg).expect("valid keys")
    }

    fn status(r: Result<(), ApiError>) -> u16 {
        match r {
            Ok(()) => 200,
            Err(ApiError::Unauthorized(_)) => 401,
            Err(ApiError::Forbidden(_)) => 403,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn the_rule() {
        let open = KeyRing::default();
        assert_eq!(status(decide(&open, Role::Admin, None)), 200);
        assert_eq!(status(decide(&open, Role::Client, None)), 200);

        let admin_only = ring(&[("ops", Role::Admin)]);
        let ops = admin_only.identify(b"ops");
        assert_eq!(status(decide(&admin_only, Role::Admin, None)), 401);
        assert_eq!(status(decide(&admin_only, Role::Admin, ops)), 200);
        // no client key configured: client routes stay open
        assert_eq!(status(decide(&admin_only, Role::Client, None)), 200);

        let both = ring(&[("ops", Role::Admin), ("shop", Role::Client)]);
        let (ops, shop) = (both.identify(b"ops"), both.identify(b"shop"));
        assert_eq!(status(decide(&both, Role::Client, None)), 401);
        assert_eq!(status(decide(&both, Role::Client, shop)), 200);
        assert_eq!(status(decide(&both, Role::Client, ops)), 200);
        assert_eq!(status(decide(&both, Role::Admin, shop)), 403);

        // client keys but no admin key: the admin routes are closed
        let client_only = ring(&[("shop", Role::Client)]);
        let shop = client_only.identify(b"shop");
        assert_eq!(status(decide(&client_only, Role::Admin, shop)), 403);
        assert_eq!(status(decide(&client_only, Role::Admin, None)), 401);
    }

    #[test]
    fn keys_are_read_from_headers_and_the_query_where_allowed() {
        let req = |h: Option<(&str, &str)>, uri: &str| {
            let mut b = Request::builder().uri(uri);
            if let Some((k, v)) = h {
                b = b.header(k, v);
            }
            b.body(axum::body::Body::empty()).expect("a request")
        };
        let cases = [
            (
                Some(("x-api-key", "k1")),
                "/",
                Credentials::Headers,
                Some("k1"),
            ),
            (
                Some(("authorization", "Bearer k2")),
                "/",
                Credentials::Headers,
                Some("k2"),
            ),
            (
                Some(("authorization", "bearer  k3 ")),
                "/",
                Credentials::Headers,
                Some("k3"),
            ),
            (
                Some(("authorization", "Basic abc")),
                "/",
                Credentials::Headers,
                None,
            ),
            (
                None,
                "/v1/stream?customer_id=c&token=k4",
                Credentials::Headers,
                None,
            ),
            (
                None,
                "/v1/stream?customer_id=c&token=k4",
                Credentials::HeadersOrQuery,
                Some("k4"),
            ),
            (
                None,
                "/v1/stream?token=a%2Bb",
                Credentials::HeadersOrQuery,
                Some("a+b"),
            ),
            (None, "/v1/stream", Credentials::HeadersOrQuery, None),
        ];
        for (h, uri, c, want) in cases {
            assert_eq!(presented(&req(h, uri), c).as_deref(), want, "{h:?} {uri}");
        }
    }
}
