//! `stock`: serve the stock function, or run one of its admin chores.

/// mimalloc, not the C library's allocator: see `mimalloc` in the workspace
/// manifest for why (measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stock",
    version,
    about = "The flash-sale stock function: sales and live stock.",
    long_about = "The flash-sale stock function: create sales (admin), show live stock, and the admin \
        breakdown/reconcile calls.\n\nWith no subcommand it serves HTTP on $PORT (default 8080), or runs \
        as an AWS Lambda function when AWS_LAMBDA_RUNTIME_API is set. Configuration comes from the \
        environment: ADMIN_TOKEN, STORE (aws|memory), REDIS_URL, DYNAMODB_ENDPOINT, LEDGER_TABLE, LEDGER_BUCKETS, \
        HOLD_TTL_SECONDS, SALE_STOCK_BUCKETS, TOKEN_PUBLIC_KEY (buyers on the waiting-room calls), \
        ADMISSION_SIGNING_KEY (admission tokens of waiting-room sales), LOG_LEVEL. See README.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Create the ledger table in DynamoDB if it does not exist, then exit.
    Migrate,
    /// Bring a sale's Redis state in line with DynamoDB and print the breakdown.
    Reconcile {
        /// The sale to reconcile.
        sale_id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any TLS client (DynamoDB, Redis) exists: one crypto provider.
    common::backends::install_crypto_provider();
    let cli = Cli::parse();
    let settings = common::config::Settings::from_env()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let client = common::backends::dynamodb(&settings).await;
            let ledger = inventory::ledger::DynamoLedger::new(client, &settings.ledger_table);
            let created = ledger.migrate().await?;
            println!(
                "ledger table {}: {}",
                settings.ledger_table,
                if created { "created" } else { "already exists" }
            );
            // The key schema did not change with layout 2: nothing to convert.
            println!(
                "ledger layout 2: each new sale over up to {} partition keys (LEDGER_BUCKETS); \
                 sales created by the one-partition layout 1 still read, but take no more orders \
                 (create them again)",
                settings.ledger_buckets
            );
            Ok(())
        }
        Command::Reconcile { sale_id } => {
            let sale_id = inventory::sale::SaleId::parse(&sale_id).map_err(anyhow::Error::msg)?;
            let inv = inventory::from_settings(&settings, inventory::InventoryConfig::from_env()?)
                .await?;
            let breakdown = inv
                .reconcile(&sale_id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&breakdown)?);
            Ok(())
        }
        Command::Serve => {
            common::telemetry::init("stock");
            let http = common::http::HttpOptions::from_env(4096)?;
            let admin_token = common::config::var("ADMIN_TOKEN").map(common::config::Secret::new);
            if admin_token.is_none() {
                tracing::warn!("ADMIN_TOKEN is not set: admin calls will be refused");
            }
            let inventory =
                inventory::from_settings(&settings, inventory::InventoryConfig::from_env()?)
                    .await?;
            let default_stock_buckets = common::config::parsed_or("SALE_STOCK_BUCKETS", 1u16)?;
            if !(1..=inventory::sale::MAX_STOCK_BUCKETS).contains(&default_stock_buckets) {
                anyhow::bail!(
                    "configuration: SALE_STOCK_BUCKETS: must be between 1 and {}",
                    inventory::sale::MAX_STOCK_BUCKETS
                );
            }
            let admission = common::token::admission::AdmissionSigner::from_env()?.map(Arc::new);
            if admission.is_none() {
                tracing::warn!(
                    "ADMISSION_SIGNING_KEY is not set: sales with a waiting room cannot be created"
                );
            }
            let verifier = match common::token::TokenVerifier::from_public_keys(
                &settings.token_public_keys,
                &settings.token_issuer,
                &settings.token_audience,
            ) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::warn!(error = %e, "no access-token key: waiting-room calls will answer 401");
                    None
                }
            };
            let room = inventory::waiting_rooms(&settings)?;
            common::serve(stock::app(
                stock::StockState {
                    inventory,
                    admin_token,
                    default_stock_buckets,
                    room,
                    admission,
                    verifier,
                },
                &http,
            ))
            .await
        }
    }
}
