//! DynamoDB over https through the SDK client the functions use
//! (`common::aws_http`): a TLS terminator in front of DynamoDB Local, with
//! the certificate `infra/local/redis.sh` made for the TLS Redis (localhost,
//! 127.0.0.1) and its CA as `SSL_CERT_FILE`, as the images set it.
//!
//! One test per process: `SSL_CERT_FILE` is process-wide.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::config::Settings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

/// The negotiated ALPN protocol of each connection the terminator took.
type Seen = Arc<Mutex<Vec<Option<Vec<u8>>>>>;

fn tls_dir() -> PathBuf {
    let ca = common::redis_testbed::tls()
        .ca_file
        .expect("the TLS variant has a CA");
    let dir = PathBuf::from(ca).parent().expect("a directory").to_owned();
    assert!(
        dir.join("server.crt").exists(),
        "no test certificates in {}: run `just backends` (infra/local/redis.sh makes them)",
        dir.display()
    );
    dir
}

/// Terminates TLS on 127.0.0.1 and pipes each connection to `upstream`.
/// Offers h2 as well as http/1.1, so what is negotiated is the client's choice.
async fn terminator(upstream: String, seen: Seen) -> u16 {
    let dir = tls_dir();
    let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .expect("server.crt")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS 1.2/1.3")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("a usable certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = listener.local_addr().expect("bound").port();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, upstream, seen) = (acceptor.clone(), upstream.clone(), seen.clone());
            tokio::spawn(async move {
                // A refused handshake (the untrusted-root case) just ends here.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                let mut plain = TcpStream::connect(&upstream).await.expect("DynamoDB Local");
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

fn settings(endpoint: String) -> Settings {
    let mut s = Settings::memory();
    s.dynamodb_endpoint = Some(endpoint);
    s.backend_timeout_ms = 15_000;
    s
}

#[tokio::test]
async fn dynamodb_over_https_speaks_http1_and_checks_the_certificate() {
    let local =
        std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let upstream = local
        .strip_prefix("http://")
        .expect("DYNAMODB_ENDPOINT is DynamoDB Local over http")
        .trim_end_matches('/')
        .to_owned();
    let seen = Seen::default();
    let port = terminator(upstream, seen.clone()).await;

    // Trusted: the CA that signed the terminator's certificate.
    std::env::set_var("SSL_CERT_FILE", tls_dir().join("ca.crt"));
    for host in ["localhost", "127.0.0.1"] {
        let client = common::backends::dynamodb(&settings(format!("https://{host}:{port}"))).await;
        client
            .list_tables()
            .limit(1)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "ListTables over https://{host}:{port} (DynamoDB Local at {local}): {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            });
    }
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|p| p.as_deref() == Some(&b"http/1.1"[..])),
            "ALPN: {seen:?}"
        );
    }

    // Untrusted: the same server against the system's roots, which did not sign it.
    std::env::set_var("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt");
    let client = common::backends::dynamodb(&settings(format!("https://localhost:{port}"))).await;
    let err = client
        .list_tables()
        .limit(1)
        .send()
        .await
        .expect_err("a certificate from an unknown CA");
    let text = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&err));
    assert!(
        text.contains("UnknownIssuer") || text.contains("certificate"),
        "{text}"
    );
}
