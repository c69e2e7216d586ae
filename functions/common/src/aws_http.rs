//! The AWS SDK's HTTP client: HTTP/1.1 only, on hyper 1 + hyper-rustls
//! (rustls on ring, the system's CA bundle).
//!
//! It replaces `aws-smithy-http-client`'s hyper client, whose `default-client`
//! feature switches on hyper's, hyper-util's and hyper-rustls' `http2`, so h2
//! (≈425 KB of every image, load/capacity.md) came with it although DynamoDB,
//! IMDS, the ECS/Lambda credentials endpoint and STS are all spoken to over
//! HTTP/1.1. What that client does for the SDK, this one does the same way:
//!
//! * `http://` (DynamoDB Local) and `https://` endpoints, one pool per
//!   connect/read timeout pair the SDK asks for (DynamoDB's, IMDS's), pooled
//!   connections kept 90 s idle (hyper-util's default), `TCP_NODELAY` on;
//! * TLS 1.2/1.3 with the same cipher suites (`restrict_ciphers`) and roots
//!   from `rustls-native-certs` (`SSL_CERT_FILE` in the images), loaded once
//!   when the SDK client is built; ALPN offers `http/1.1` only;
//! * the connect timeout covers DNS, TCP and the TLS handshake; the read
//!   timeout, when the SDK sets one, the wait for the response head;
//! * errors classified for the SDK's retries as upstream does (timeout, I/O,
//!   user, transient incomplete message), and hyper-util's
//!   `legacy::Error::is_connect` kept for the ledger's "never connected";
//! * the connection of each attempt captured, so the SDK can poison it after a
//!   transient error (`ConnectionPoisoningInterceptor`).
//!
//! Not carried over: proxies (the SDK client never read `HTTP(S)_PROXY`
//! unless configured, and nothing here configures one) and the per-attempt
//! telemetry that only an SDK metrics provider, which no function installs,
//! would read.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connection::{CaptureSmithyConnection, ConnectionMetadata};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::ErrorKind;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, HttpConnector as TcpConnector, HttpInfo,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// The SDK's HTTP client (see the module docs). Roots come from the system
/// (`SSL_CERT_FILE`, then the platform's bundle).
pub fn client() -> SharedHttpClient {
    SharedHttpClient::new(Http1Client::new(Roots::Native))
}

/// Where the trust anchors come from.
#[derive(Clone)]
enum Roots {
    /// `rustls-native-certs`: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else the system's.
    Native,
    /// Exactly these (tests).
    #[cfg(test)]
    Given(Arc<rustls::RootCertStore>),
}

/// A connect timeout and a read timeout, as the SDK asks for them.
type Timeouts = (Option<Duration>, Option<Duration>);

/// One pool per connect/read timeout pair, built on first use.
struct Http1Client {
    roots: Roots,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    connectors: RwLock<HashMap<Timeouts, SharedHttpConnector>>,
}

impl fmt::Debug for Http1Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Client")
            .field(
                "pools",
                &self.connectors.read().map(|c| c.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl Http1Client {
    fn new(roots: Roots) -> Self {
        Self {
            roots,
            tls: OnceLock::new(),
            connectors: RwLock::new(HashMap::new()),
        }
    }

    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| Arc::new(tls_config(&self.roots)))
            .clone()
    }

    fn connector(&self, connect: Option<Duration>, read: Option<Duration>) -> Http1Connector {
        let mut tcp = TcpConnector::new();
        tcp.set_nodelay(true);
        // The scheme is hyper-rustls' to check: https gets TLS, http does not.
        tcp.enforce_http(false);
        let https = HttpsConnector::from((tcp, self.tls_config()));
        let mut builder = Client::builder(TokioExecutor::new());
        // Without a timer hyper-util never expires idle connections.
        builder.pool_timer(TokioTimer::new());
        Http1Connector {
            client: builder.build(Connect {
                inner: https,
                timeout: connect,
            }),
            read_timeout: read,
        }
    }
}

impl HttpClient for Http1Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key: Timeouts = (settings.connect_timeout(), settings.read_timeout());
        if let Some(connector) = self.connectors.read().expect("not poisoned").get(&key) {
            return connector.clone();
        }
        self.connectors
            .write()
            .expect("not poisoned")
            .entry(key)
            .or_insert_with(|| SharedHttpConnector::new(self.connector(key.0, key.1)))
            .clone()
    }

    /// Loads the roots when the SDK client is built, not on its first call.
    fn validate_base_client_config(
        &self,
        _: &RuntimeComponentsBuilder,
        _: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.tls_config();
        Ok(())
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("hyper", Some("1.x".into())))
    }
}

/// rustls as `aws-smithy-http-client` configured it, less `h2` in ALPN.
fn tls_config(roots: &Roots) -> rustls::ClientConfig {
    let roots = match roots {
        Roots::Native => Arc::new(native_roots()),
        #[cfg(test)]
        Roots::Given(roots) => roots.clone(),
    };
    let provider = Arc::new(restrict_ciphers(rustls::crypto::ring::default_provider()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn native_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(errors = ?found.errors, "native root CA certificate loading errors");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (valid, _invalid) = roots.add_parsable_certificates(found.certs);
    if valid == 0 {
        tracing::warn!("no native root CA certificates found: https endpoints will fail");
    }
    roots
}

/// The suites the SDK's client allows (AES-GCM on TLS 1.3; ECDHE with
/// AES-GCM or, for RSA, ChaCha20 on TLS 1.2), in its order.
fn restrict_ciphers(base: rustls::crypto::CryptoProvider) -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    const ALLOWED: [S; 7] = [
        S::TLS13_AES_256_GCM_SHA384,
        S::TLS13_AES_128_GCM_SHA256,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let cipher_suites = ALLOWED
        .iter()
        .filter_map(|want| {
            base.cipher_suites
                .iter()
                .find(|s| s.suite() == *want)
                .cloned()
        })
        .collect();
    rustls::crypto::CryptoProvider {
        cipher_suites,
        ..base
    }
}

/// DNS + TCP + TLS, under the connect timeout.
#[derive(Clone)]
struct Connect {
    inner: HttpsConnector<TcpConnector>,
    timeout: Option<Duration>,
}

type Conn = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for Connect {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let Some(limit) = self.timeout else {
            return connecting;
        };
        Box::pin(async move {
            tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| TimedOut::boxed("connect", limit))?
        })
    }
}

/// A connect or read timeout; the SDK retries it as a timeout.
#[derive(Debug)]
struct TimedOut {
    what: &'static str,
    after: Duration,
}

impl TimedOut {
    fn boxed(what: &'static str, after: Duration) -> BoxError {
        Box::new(Self { what, after })
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timeout occurred after {:?}", self.what, self.after)
    }
}

impl StdError for TimedOut {}

/// One pool: what the SDK calls with each attempt.
struct Http1Connector {
    client: Client<Connect, SdkBody>,
    read_timeout: Option<Duration>,
}

impl fmt::Debug for Http1Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Connector")
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

impl HttpConnector for Http1Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let captured = capture_connection(&mut request);
        if let Some(smithy) = request.extensions().get::<CaptureSmithyConnection>() {
            smithy.set_connection_retriever(move || connection_metadata(&captured));
        }
        let responding = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                None => responding.await,
                Some(limit) => match tokio::time::timeout(limit, responding).await {
                    Ok(response) => response,
                    Err(_) => {
                        return Err(ConnectorError::timeout(TimedOut::boxed("HTTP read", limit)))
                    }
                },
            };
            match response {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(classify(e.into())),
            }
        })
    }
}

/// The attempt's connection, for the SDK to poison after a transient error.
fn connection_metadata(captured: &CaptureConnection) -> Option<ConnectionMetadata> {
    let connected = captured.connection_metadata();
    let connected = connected.as_ref()?;
    let mut extras = http::Extensions::new();
    connected.get_extras(&mut extras);
    let info = extras.get::<HttpInfo>();
    let poisoner = captured.clone();
    let mut builder = ConnectionMetadata::builder()
        .proxied(connected.is_proxied())
        .poison_fn(move || {
            if let Some(connected) = poisoner.connection_metadata().as_ref() {
                connected.poison();
            }
        });
    builder
        .set_local_addr(info.map(|i| i.local_addr()))
        .set_remote_addr(info.map(|i| i.remote_addr()));
    Some(builder.build())
}

/// A failed attempt, in the SDK's terms (what `aws-smithy-http-client` does,
/// less its h2 cases).
fn classify(err: BoxError) -> ConnectorError {
    if find::<TimedOut>(err.as_ref()).is_some() {
        return ConnectorError::timeout(err);
    }
    if let Some(hyper) = find::<hyper::Error>(err.as_ref()) {
        if hyper.is_timeout() {
            return ConnectorError::timeout(err);
        }
        if hyper.is_user() {
            return ConnectorError::user(err);
        }
        if hyper.is_closed() || hyper.is_canceled() || find::<std::io::Error>(hyper).is_some() {
            return ConnectorError::io(err);
        }
        if hyper.is_incomplete_message() {
            return ConnectorError::other(err, Some(ErrorKind::TransientError));
        }
        tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&*err), "unrecognised hyper error");
        return ConnectorError::other(err, None);
    }
    if let Some(client) = find::<hyper_util::client::legacy::Error>(err.as_ref()) {
        if client.is_connect() || find::<std::io::Error>(client).is_some() {
            return ConnectorError::io(err);
        }
    }
    ConnectorError::other(err, None)
}

fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn request(uri: &str) -> HttpRequest {
        let mut request = HttpRequest::new(SdkBody::from("{}"));
        request.set_uri(uri).expect("valid uri");
        request
    }

    fn connector(connect: Option<Duration>, read: Option<Duration>) -> Http1Connector {
        Http1Client::new(Roots::Given(Arc::new(rustls::RootCertStore::empty())))
            .connector(connect, read)
    }

    /// Accepts one connection and answers every request with `answer`.
    async fn server(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = vec![0u8; 4096];
            let n = socket.read(&mut seen).await.unwrap();
            seen.truncate(n);
            socket.write_all(answer).await.unwrap();
            seen
        });
        (format!("http://{addr}/"), task)
    }

    #[tokio::test]
    async fn speaks_http1_over_plain_tcp() {
        let (uri, server) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let response = connector(Some(Duration::from_secs(1)), None)
            .call(request(&uri))
            .await
            .expect("a response");
        assert_eq!(response.status().as_u16(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("the body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(seen.starts_with("GET / HTTP/1.1\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error_hyper_calls_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connector(Some(Duration::from_secs(1)), None)
            .call(request(&format!("http://{addr}/")))
            .await
            .expect_err("nothing listens");
        assert!(err.is_io(), "{err:?}");
        let client = find::<hyper_util::client::legacy::Error>(&err).expect("hyper-util's error");
        assert!(client.is_connect());
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_a_connect_timeout() {
        // Accepts TCP, never says a word: the handshake cannot finish.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(socket);
        });
        let started = std::time::Instant::now();
        let err = connector(Some(Duration::from_millis(200)), None)
            .call(request(&format!("https://localhost:{}/", addr.port())))
            .await
            .expect_err("no handshake");
        assert!(err.is_timeout(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let client = find::<hyper_util::client::legacy::Error>(&err).expect("hyper-util's error");
        assert!(
            client.is_connect(),
            "the ledger counts it as never connected"
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_read_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(socket);
        });
        let err = connector(None, Some(Duration::from_millis(200)))
            .call(request(&format!("http://{addr}/")))
            .await
            .expect_err("no answer");
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test]
    async fn a_connection_closed_mid_answer_is_retryable() {
        let (uri, _server) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n").await;
        let err = connector(None, None)
            .call(request(&uri))
            .await
            .expect_err("cut short");
        assert!(
            err.is_io() || err.as_other() == Some(ErrorKind::TransientError),
            "{err:?}"
        );
    }

    #[test]
    fn offers_http1_only_with_the_sdks_suites() {
        let config = tls_config(&Roots::Given(Arc::new(rustls::RootCertStore::empty())));
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let suites: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites.len(), 7, "{suites:?}");
        assert!(!suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
