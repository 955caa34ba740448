//! `[metrics] listen`: a listener of its own serving only `GET /metrics`,
//! for a Prometheus server on another machine. It is separate from the
//! admin API, which stays loopback-only and unauthenticated; with
//! `bearer_token_file` every request must carry
//! `Authorization: Bearer <token>` (else 401).

use std::net::SocketAddr;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use fleetsync_config::BearerToken;

use super::Cache;

/// `<data_dir>/metrics.addr`: the address the metrics listener is bound
/// to (`listen` may use port 0, like `admin.listen`).
pub const ADDR_FILE: &str = "metrics.addr";

#[derive(Clone)]
struct Metrics {
    cache: Cache,
    /// blake3 of the token: comparing hashes is constant-time
    /// (`blake3::Hash`'s `==`), so a wrong guess learns nothing by timing.
    token: Option<blake3::Hash>,
}

/// Bind and serve; returns the task and the bound address.
pub async fn serve(
    addr: SocketAddr,
    token: Option<&BearerToken>,
    cache: Cache,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "metrics listener cannot listen on {addr}: {e} (set metrics.listen to a free port)"
        )
    })?;
    let bound = listener.local_addr()?;
    let state = Metrics {
        cache,
        token: token.map(|t| blake3::hash(t.as_str().as_bytes())),
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics listener stopped: {e}");
        }
    });
    Ok((task, bound))
}

async fn scrape(State(m): State<Metrics>, headers: axum::http::HeaderMap) -> Response {
    if let Some(want) = m.token {
        if !authorized(&headers, &want) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "send Authorization: Bearer <the token in metrics.bearer_token_file>\n",
            )
                .into_response();
        }
    }
    exposition(&m.cache)
}

/// The cached snapshot rendered (never waits on an actor).
pub fn exposition(cache: &Cache) -> Response {
    (
        [(header::CONTENT_TYPE, super::CONTENT_TYPE)],
        super::render(cache.get()),
    )
        .into_response()
}

/// `Authorization: Bearer <token>` with the configured token.
fn authorized(headers: &axum::http::HeaderMap, want: &blake3::Hash) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| blake3::hash(t.trim().as_bytes()) == *want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_configured_bearer_token_is_let_in() {
        let want = blake3::hash(b"tok3n");
        assert!(authorized(&headers(Some("Bearer tok3n")), &want));
        assert!(!authorized(&headers(Some("Bearer other")), &want));
        assert!(!authorized(&headers(Some("Basic tok3n")), &want));
        assert!(!authorized(&headers(Some("tok3n")), &want));
        assert!(!authorized(&headers(None), &want));
    }
}
