//! JSON logs: one object per line, with the request id of the span the event
//! was logged in, and the Knative service/revision when running there.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `LOG_LEVEL` takes an `EnvFilter`
/// directive (default `info`); `LOG_FORMAT=text` gives human-readable lines.
/// Safe to call more than once (later calls are no-ops), which tests rely on.
pub fn init(function: &'static str) {
    let filter =
        EnvFilter::try_new(crate::config::var("LOG_LEVEL").unwrap_or_else(|| "info".to_owned()))
            .unwrap_or_else(|_| EnvFilter::new("info"));
    let text = crate::config::var("LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("text"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if text {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(
            function,
            k_service = crate::config::var("K_SERVICE"),
            k_revision = crate::config::var("K_REVISION"),
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
    }
}
