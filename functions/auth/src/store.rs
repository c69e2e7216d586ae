//! Where users live: DynamoDB (the real path) or memory (embedded mode).
//!
//! One username can never be registered twice: the DynamoDB write is
//! conditional on the (lower-cased) username not existing, so even twenty
//! simultaneous registrations of one name produce exactly one user.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;

use crate::domain::Username;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: String,
    pub username: Username,
    /// PHC string: `$argon2id$v=19$m=…`.
    pub password_hash: String,
    pub created_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username is taken")]
    Taken,
    #[error("user store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts the user unless the username exists ([`StoreError::Taken`]).
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn find(&self, username: &Username) -> Result<Option<UserRecord>, StoreError>;
    async fn ready(&self) -> Result<(), String>;
}

// ---------------------------------------------------------------- DynamoDB

pub struct DynamoUserStore {
    client: Client,
    table: String,
}

impl DynamoUserStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Creates the users table (partition key `username`) if it is absent.
    pub async fn migrate(&self) -> anyhow::Result<bool> {
        let create = self
            .client
            .create_table()
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("username")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("username")
                    .key_type(KeyType::Hash)
                    .build()?,
            );
        common::backends::create_table_if_absent(&self.client, &self.table, create).await
    }
}

fn unavailable<E: std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(DisplayErrorContext(e).to_string())
}

fn string_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

#[async_trait]
impl UserStore for DynamoUserStore {
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(
                "username",
                AttributeValue::S(user.username.as_str().to_owned()),
            )
            .item("user_id", AttributeValue::S(user.user_id.clone()))
            .item(
                "password_hash",
                AttributeValue::S(user.password_hash.clone()),
            )
            .item("created_at", AttributeValue::S(user.created_at.clone()))
            .condition_expression("attribute_not_exists(username)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::Taken)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn find(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("username", AttributeValue::S(username.as_str().to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        match (
            string_attr(&item, "user_id"),
            string_attr(&item, "password_hash"),
        ) {
            (Some(user_id), Some(password_hash)) => Ok(Some(UserRecord {
                user_id,
                username: username.clone(),
                password_hash,
                created_at: string_attr(&item, "created_at").unwrap_or_default(),
            })),
            _ => Err(StoreError::Unavailable(format!(
                "user item for {username} is missing attributes"
            ))),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::dynamodb_table_ready(&self.client, &self.table).await
    }
}

// ---------------------------------------------------------------- memory

#[derive(Default)]
pub struct MemoryUserStore {
    users: Mutex<HashMap<Username, UserRecord>>,
}

impl MemoryUserStore {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<Username, UserRecord>> {
        match self.users.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[async_trait]
impl UserStore for MemoryUserStore {
    async fn insert(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut users = self.users();
        if users.contains_key(&user.username) {
            return Err(StoreError::Taken);
        }
        users.insert(user.username.clone(), user.clone());
        Ok(())
    }

    async fn find(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users().get(username).cloned())
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
