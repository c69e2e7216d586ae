//! The keep-alive pooled HTTP/1.1 client to DynamoDB Local.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An upstream answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Headers that belong to one connection, not to the message (RFC 9110
/// §7.6.1): never copied across the proxy. `content-length` is recomputed.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

/// The upstream endpoint and its connection pool.
pub struct Upstream {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Upstream {
    pub fn new(base: &str) -> anyhow::Result<Upstream> {
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("upstream {base:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.host().is_some(),
            "upstream {base:?} must be an http:// URL"
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Upstream { base, client })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `body` to `path` with the given request headers (hop-by-hop
    /// ones dropped) and reads the whole answer.
    pub async fn send(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let uri: Uri = format!("{}{path}", self.base).parse()?;
        let mut request = Request::post(uri).body(Full::new(body))?;
        for (name, value) in headers {
            if !is_hop_by_hop(name) {
                request.headers_mut().append(name, value.clone());
            }
        }
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}
