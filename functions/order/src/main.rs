//! `order`: serve the order function.

/// mimalloc, not the C library's allocator: see `mimalloc` in the workspace
/// manifest for why (measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "order",
    version,
    about = "The flash-sale order function: checkout and the caller's orders.",
    long_about = "The flash-sale order function: checkout (Redis gate, then the DynamoDB ledger), \
        idempotent replays, and the caller's orders.\n\nWith no subcommand it serves HTTP on $PORT \
        (default 8080), or runs as an AWS Lambda function when AWS_LAMBDA_RUNTIME_API is set. \
        Configuration comes from the environment: TOKEN_PUBLIC_KEY (required), TOKEN_ISSUER, \
        TOKEN_AUDIENCE, STORE (aws|memory), REDIS_URL, DYNAMODB_ENDPOINT, LEDGER_TABLE, \
        HOLD_TTL_SECONDS, LEDGER_TIMEOUT_MS, LOG_LEVEL. See README.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any TLS client (DynamoDB, Redis) exists: one crypto provider.
    common::backends::install_crypto_provider();
    let Cli { command } = Cli::parse();
    let Command::Serve = command.unwrap_or(Command::Serve);
    common::telemetry::init("order");
    let settings = common::config::Settings::from_env()?;
    let verifier = common::token::TokenVerifier::from_public_keys(
        &settings.token_public_keys,
        &settings.token_issuer,
        &settings.token_audience,
    )?;
    let http = common::http::HttpOptions::from_env(4096)?;
    let inventory =
        inventory::from_settings(&settings, inventory::InventoryConfig::from_env()?).await?;
    let state = order::OrderState {
        inventory,
        verifier: Arc::new(verifier),
        client_ip: Arc::new(common::client_ip::ClientIpPolicy::from_env()?),
        admissions: order::Admissions {
            verifier: common::token::admission::AdmissionVerifier::from_env()?.map(Arc::new),
            rooms: Some(inventory::waiting_rooms(&settings)?),
        },
    };
    common::serve(order::app(state, &http)).await
}
