//! What the abuse-hardening suites share (issue 13, items 1-4): unique
//! names, a server on a random port, and the answers' small accessors.

#![allow(dead_code)]

pub mod leak_scan;

use serde_json::Value;
use system_tests::Reply;

pub const PASSWORD: &str = "correct horse battery staple";

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

pub fn random_u64() -> u64 {
    ulid::Ulid::new().random() as u64
}

pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    tokio::spawn(common::serve::serve_on(
        listener,
        router,
        std::future::pending::<()>(),
    ));
    url
}

pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Reply {
    Reply::from(client.post(url).json(body).send().await).await
}

pub fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{} without a numeric Retry-After", r.status))
}
