//! Key schemas of the tables behind the proxy.
//!
//! Budgets are per partition-key value, so the proxy must know which
//! attribute of an item is the partition key. It asks upstream with
//! `DescribeTable` the first time it sees a table and caches the answer (a
//! table's key schema cannot change). The cache is keyed by the caller's
//! credential scope as well as the table name, because DynamoDB Local
//! without `-sharedDb` keeps one database per access key and region.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// Keys of one global secondary index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSchema {
    pub hash_key: String,
    pub range_key: Option<String>,
}

/// What the proxy needs to know about a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    pub name: String,
    /// `TableArn`: the `resource` of a throttling reason.
    pub arn: String,
    pub hash_key: String,
    pub range_key: Option<String>,
    /// PAY_PER_REQUEST: throttles answer `ThrottlingException` /
    /// `ThrottlingError`; provisioned ones the `ProvisionedThroughput...` forms.
    pub on_demand: bool,
    pub indexes: HashMap<String, IndexSchema>,
}

fn keys_of(schema: &Value) -> Option<(String, Option<String>)> {
    let mut hash = None;
    let mut range = None;
    for element in schema.as_array()? {
        let name = element["AttributeName"].as_str()?.to_string();
        match element["KeyType"].as_str()? {
            "HASH" => hash = Some(name),
            "RANGE" => range = Some(name),
            _ => {}
        }
    }
    Some((hash?, range))
}

impl TableSchema {
    /// Reads a `DescribeTable` answer body.
    pub fn from_describe(body: &Value) -> Option<TableSchema> {
        let table = &body["Table"];
        let (hash_key, range_key) = keys_of(&table["KeySchema"])?;
        let name = table["TableName"].as_str()?.to_string();
        let arn = table["TableArn"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("arn:aws:dynamodb:ddblocal:000000000000:table/{name}"));
        let on_demand =
            table["BillingModeSummary"]["BillingMode"].as_str() == Some("PAY_PER_REQUEST");
        let indexes = table["GlobalSecondaryIndexes"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|gsi| {
                        let (hash_key, range_key) = keys_of(&gsi["KeySchema"])?;
                        let name = gsi["IndexName"].as_str()?.to_string();
                        Some((
                            name,
                            IndexSchema {
                                hash_key,
                                range_key,
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(TableSchema {
            name,
            arn,
            hash_key,
            range_key,
            on_demand,
            indexes,
        })
    }

    /// The partition-key value of an item or key, if it has one.
    pub fn partition_of<'a>(&self, item: &'a Map<String, Value>) -> Option<&'a Value> {
        item.get(&self.hash_key)
    }

    /// A stable identity for the item with this primary key (table, partition
    /// value, sort value): what transaction conflicts are tracked by.
    pub fn item_id(&self, item: &Map<String, Value>) -> Option<String> {
        let hash = canonical(item.get(&self.hash_key)?);
        let range = match &self.range_key {
            Some(r) => canonical(item.get(r)?),
            None => String::new(),
        };
        Some(format!("{}\u{1f}{hash}\u{1f}{range}", self.name))
    }

    /// Only the primary-key attributes of an item.
    pub fn key_of(&self, item: &Map<String, Value>) -> Map<String, Value> {
        let mut key = Map::new();
        for name in std::iter::once(&self.hash_key).chain(self.range_key.as_ref()) {
            if let Some(v) = item.get(name) {
                key.insert(name.clone(), v.clone());
            }
        }
        key
    }
}

/// A deterministic text form of an attribute value (one `{"T": v}` entry).
pub fn canonical(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A partition-key value as people read it in reports: `SALE#42`, `17`.
pub fn display(value: &Value) -> String {
    match value.as_object().and_then(|o| o.iter().next()) {
        Some((_, Value::String(s))) => s.clone(),
        _ => canonical(value),
    }
}

/// Cached schemas, shared by all connections.
#[derive(Default)]
pub struct SchemaCache {
    tables: Mutex<HashMap<(String, String), Arc<TableSchema>>>,
}

impl SchemaCache {
    pub fn get(&self, scope: &str, table: &str) -> Option<Arc<TableSchema>> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.get(&(scope.to_string(), table.to_string())).cloned()
    }

    pub fn insert(&self, scope: &str, schema: TableSchema) -> Arc<TableSchema> {
        let schema = Arc::new(schema);
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.insert((scope.to_string(), schema.name.clone()), schema.clone());
        schema
    }

    /// Forget a table (after DeleteTable/CreateTable went through).
    pub fn forget(&self, scope: &str, table: &str) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.remove(&(scope.to_string(), table.to_string()));
    }
}

/// `Credential=AKID/DATE/REGION/...` → `AKID/REGION`: which DynamoDB Local
/// database (and which account's idempotency tokens) a request belongs to.
pub fn credential_scope(authorization: Option<&str>) -> String {
    let Some(auth) = authorization else {
        return String::new();
    };
    let Some(start) = auth.find("Credential=") else {
        return String::new();
    };
    let credential = auth[start + "Credential=".len()..]
        .split([',', ' '])
        .next()
        .unwrap_or("");
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [akid, _date, region, ..] => format!("{akid}/{region}"),
        _ => credential.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_describe_table() {
        let body = json!({"Table": {
            "TableName": "orders",
            "TableArn": "arn:aws:dynamodb:ddblocal:000000000000:table/orders",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
            "GlobalSecondaryIndexes": [{"IndexName": "byUser", "KeySchema": [{"AttributeName": "user", "KeyType": "HASH"}]}]
        }});
        let s = TableSchema::from_describe(&body).expect("schema");
        assert_eq!(s.hash_key, "pk");
        assert_eq!(s.range_key.as_deref(), Some("sk"));
        assert!(s.on_demand);
        assert_eq!(s.indexes["byUser"].hash_key, "user");
        let item = json!({"pk": {"S": "A"}, "sk": {"S": "1"}, "x": {"N": "1"}});
        let item = item.as_object().cloned().unwrap_or_default();
        assert_eq!(s.key_of(&item).len(), 2);
        assert_eq!(display(s.partition_of(&item).unwrap_or(&Value::Null)), "A");
        assert!(s.item_id(&item).is_some());
    }

    #[test]
    fn scope_from_sigv4() {
        let auth = "AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=x";
        assert_eq!(credential_scope(Some(auth)), "local/us-east-1");
        assert_eq!(credential_scope(None), "");
    }
}
