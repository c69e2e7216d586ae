//! `auth`: serve the auth function, or one of its admin chores.

/// mimalloc, not the C library's allocator: see `mimalloc` in the workspace
/// manifest for why (measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "auth",
    version,
    about = "The flash-sale auth function: register, login, access tokens.",
    long_about = "The flash-sale auth function: register, login (argon2id), Ed25519 access tokens.\n\n\
        With no subcommand it serves HTTP on $PORT (default 8080), or runs as an AWS Lambda \
        function when AWS_LAMBDA_RUNTIME_API is set. Configuration comes from the environment: \
        TOKEN_SIGNING_KEY (required), STORE (aws|memory), REDIS_URL, DYNAMODB_ENDPOINT, \
        USERS_TABLE, TOKEN_ISSUER, TOKEN_AUDIENCE, TOKEN_TTL_SECONDS, HASH_WORKERS, HASH_QUEUE, \
        LOGIN_MAX_FAILURES, LOGIN_LOCK_SECONDS, LOG_LEVEL. See README.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Print a fresh Ed25519 key pair as TOKEN_SIGNING_KEY=… and TOKEN_PUBLIC_KEY=… lines.
    Keygen,
    /// Print the TOKEN_PUBLIC_KEY that matches $TOKEN_SIGNING_KEY.
    PublicKey,
    /// Create the users table in DynamoDB if it does not exist, then exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any TLS client (DynamoDB, Redis) exists: one crypto provider.
    common::backends::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen => {
            let signer = common::token::TokenSigner::generate("", "", 0);
            println!("TOKEN_SIGNING_KEY={}", signer.seed_b64());
            println!("TOKEN_PUBLIC_KEY={}", signer.public_key_b64());
            Ok(())
        }
        Command::PublicKey => {
            let config = auth::AuthConfig::from_env()?;
            let signer =
                common::token::TokenSigner::from_seed(config.signing_key.expose(), "", "", 0)?;
            println!("TOKEN_PUBLIC_KEY={}", signer.public_key_b64());
            Ok(())
        }
        Command::Migrate => {
            let settings = common::config::Settings::from_env()?;
            let client = common::backends::dynamodb(&settings).await;
            let store = auth::store::DynamoUserStore::new(client, &settings.users_table);
            let created = store.migrate().await?;
            println!(
                "users table {}: {}",
                settings.users_table,
                if created { "created" } else { "already exists" }
            );
            Ok(())
        }
        Command::Serve => {
            common::telemetry::init("auth");
            let config = auth::AuthConfig::from_env()?;
            let http = common::http::HttpOptions::from_env(1024)?;
            let state = auth::AuthState::from_config(&config).await?;
            common::serve(auth::app(state, &http)).await
        }
    }
}
