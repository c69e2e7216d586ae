//! One Router, two runtimes.
//!
//! On AWS Lambda (`AWS_LAMBDA_RUNTIME_API` is set) the router is handed to
//! `lambda_http`; everywhere else (Knative, a container, a laptop) it is
//! served by axum on `$PORT`, and SIGTERM or Ctrl-C stops accepting new
//! connections while in-flight requests finish.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use tokio::net::TcpListener;

use crate::config::{parsed_or, var};

/// Where a plain-process server listens: `$PORT` (default 8080) on
/// `$BIND_ADDR`, which defaults to all interfaces inside Knative (it must be
/// reachable by the queue-proxy) and to loopback everywhere else.
pub fn listen_addr() -> anyhow::Result<SocketAddr> {
    let port: u16 = parsed_or("PORT", 8080)?;
    let default_ip = if var("K_SERVICE").is_some() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let ip: IpAddr = parsed_or("BIND_ADDR", default_ip)?;
    Ok(SocketAddr::new(ip, port))
}

/// Runs `router` until shutdown, on Lambda or as an HTTP server.
pub async fn serve(router: Router) -> anyhow::Result<()> {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        // Metrics as EMF records on stdout, flushed at the end of an
        // invocation, before Lambda can freeze the process (metrics/emf.rs).
        let router = if crate::metrics::emf::enabled() {
            router.layer(axum::middleware::map_response(
                |response: axum::response::Response| async move {
                    crate::metrics::emf::after_invocation();
                    response
                },
            ))
        } else {
            router
        };
        return lambda_http::run(router)
            .await
            .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"));
    }
    spawn_metrics_server().await?;
    let listener = TcpListener::bind(listen_addr()?).await?;
    serve_on(listener, router, shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` resolves, then
/// drains in-flight requests. Tests use it with a random port.
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, k_service = var("K_SERVICE"), k_revision = var("K_REVISION"), "listening");
    let grace = std::time::Duration::from_secs(parsed_or("SHUTDOWN_GRACE_SECONDS", 20u64)?);
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    // ConnectInfo: the peer address, for per-IP rate limits (client_ip.rs).
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled.send(true);
    });
    // Drain in-flight requests, but not for ever: a client that never
    // finishes its request must not keep the process alive past the
    // platform's grace period.
    let deadline = async move {
        let _ = on_signal.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => {
            result?;
            tracing::info!(k_service = var("K_SERVICE"), k_revision = var("K_REVISION"), "stopped: in-flight requests finished");
        }
        _ = deadline => tracing::warn!(?grace, k_service = var("K_SERVICE"), k_revision = var("K_REVISION"), "stopped: grace period over with requests still open"),
    }
    Ok(())
}

/// Prometheus metrics on `METRICS_PORT` (loopback unless `BIND_ADDR` says
/// otherwise), a port the public router never forwards to.
async fn spawn_metrics_server() -> anyhow::Result<()> {
    let Some(port) = var("METRICS_PORT") else {
        return Ok(());
    };
    let port: u16 = port.parse()?;
    let mut addr = listen_addr()?;
    addr.set_port(port);
    let listener = TcpListener::bind(addr).await?;
    let app = Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                crate::metrics::render(),
            )
        }),
    );
    tracing::info!(%addr, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// Resolves on SIGTERM (Knative, Kubernetes, `just down`) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!(
        k_service = var("K_SERVICE"),
        k_revision = var("K_REVISION"),
        "shutdown signal received: draining"
    );
}
