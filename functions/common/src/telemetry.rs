//! JSON logs: one object per line, with the request id of the span the event
//! was logged in, and the Knative service/revision when running there.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `LOG_LEVEL` is a level (default `info`),
/// optionally with per-target levels: `warn,inventory=debug`. That is
/// `Targets`' syntax, `EnvFilter`'s without span and field filters: it needs
/// no regex engine (a fifth of a megabyte less per binary) and decides each
/// event with a prefix match. An unparsable value falls back to `info`.
/// `LOG_FORMAT=text` gives human-readable lines.
/// Safe to call more than once (later calls are no-ops), which tests rely on.
pub fn init(function: &'static str) {
    let filter = crate::config::var("LOG_LEVEL")
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
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
