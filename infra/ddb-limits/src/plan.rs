//! What a request touches and what it costs, read from its JSON body.
//!
//! A [`Plan`] lists every item (or, for a Query, every partition) a request
//! touches, the partition-key budget each one draws on, the write units it
//! is charged before being forwarded, and how its reads are charged once the
//! answer (and so the items' sizes) are known. Each item is charged to its
//! own partition key, so one `TransactWriteItems` may draw on several.
//!
//! Capacity rules: "DynamoDB read and write operations",
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/read-write-operations.html>.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::budget::BudgetKey;
use crate::capacity::{item_size, read_units, value_size, write_units, Read, Write};
pub use crate::reads::read_charges;
use crate::schema::{display, TableSchema};

/// One item (or queried partition) a request touches.
#[derive(Clone, Debug)]
pub struct Touch {
    pub schema: Arc<TableSchema>,
    /// A GSI, when a Query reads an index's partitions.
    pub index: Option<String>,
    pub budget: BudgetKey,
    /// The item's identity for transaction conflicts (None for a Query).
    pub item: Option<String>,
    /// Write units charged before forwarding.
    pub wcu: f64,
    /// Read units charged before forwarding (a transaction's ConditionCheck,
    /// whose answer carries no item to size).
    pub rcu: f64,
    /// Reads charged after the answer, at this consistency.
    pub read: Option<Read>,
    /// Bytes this action carries (the 4 MB transaction rule).
    pub size: u64,
    /// The request element, for batch requests split by the proxy.
    pub element: Value,
}

impl Touch {
    pub fn is_write(&self) -> bool {
        self.wcu > 0.0
    }
}

/// Everything the proxy needs to enforce limits on one request.
#[derive(Clone, Debug)]
pub struct Plan {
    pub op: String,
    pub touches: Vec<Touch>,
    /// A Scan: items are charged to their own keys after the answer.
    pub scan: Option<(Arc<TableSchema>, Option<String>, Read)>,
}

/// The tables a request names (their schemas must be known to plan it).
pub fn tables(op: &str, body: &Value) -> Vec<String> {
    let mut names: Vec<String> = match op {
        "GetItem" | "PutItem" | "UpdateItem" | "DeleteItem" | "Query" | "Scan" => body["TableName"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .collect(),
        "BatchGetItem" | "BatchWriteItem" => body["RequestItems"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        "TransactGetItems" | "TransactWriteItems" => transact_items(body)
            .filter_map(|(_, action)| action["TableName"].as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    names.sort();
    names.dedup();
    names
}

fn transact_items(body: &Value) -> impl Iterator<Item = (&str, &Value)> {
    body["TransactItems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.as_object()?.iter().next())
        .map(|(kind, action)| (kind.as_str(), action))
}

fn obj(value: &Value) -> Option<&Map<String, Value>> {
    value.as_object()
}

/// Builds the plan, or `None` when the request is not one the proxy models
/// or is malformed (it is then forwarded untouched, for DynamoDB Local to
/// answer).
pub fn build(
    op: &str,
    body: &Value,
    schema_of: &dyn Fn(&str) -> Option<Arc<TableSchema>>,
) -> Option<Plan> {
    let mut plan = Plan {
        op: op.to_string(),
        touches: Vec::new(),
        scan: None,
    };
    let table = || schema_of(body["TableName"].as_str()?);
    match op {
        "GetItem" => {
            let read = Read::from_consistent(body["ConsistentRead"].as_bool() == Some(true));
            plan.touches
                .push(item_touch(&table()?, obj(&body["Key"])?, body)?.reading(read));
        }
        "PutItem" => {
            let item = obj(&body["Item"])?;
            let size = item_size(item);
            let t = item_touch(&table()?, item, body)?;
            plan.touches.push(t.writing(size, Write::Standard));
        }
        "UpdateItem" => {
            let key = obj(&body["Key"])?;
            let size = update_estimate(key, body);
            plan.touches
                .push(item_touch(&table()?, key, body)?.writing(size, Write::Standard));
        }
        "DeleteItem" => {
            let key = obj(&body["Key"])?;
            let size = item_size(key);
            plan.touches
                .push(item_touch(&table()?, key, body)?.writing(size, Write::Standard));
        }
        "Query" => plan.touches.push(query_touch(&table()?, body)?),
        "Scan" => {
            let index = body["IndexName"].as_str().map(str::to_string);
            let read = consistency(body, index.is_some());
            plan.scan = Some((table()?, index, read));
        }
        "BatchGetItem" => {
            for (name, spec) in obj(&body["RequestItems"])? {
                let schema = schema_of(name)?;
                let read = Read::from_consistent(spec["ConsistentRead"].as_bool() == Some(true));
                for key in spec["Keys"].as_array()? {
                    plan.touches
                        .push(item_touch(&schema, obj(key)?, key)?.reading(read));
                }
            }
        }
        "BatchWriteItem" => {
            for (name, requests) in obj(&body["RequestItems"])? {
                let schema = schema_of(name)?;
                for request in requests.as_array()? {
                    let (item, size) = if let Some(item) = obj(&request["PutRequest"]["Item"]) {
                        (item, item_size(item))
                    } else {
                        let key = obj(&request["DeleteRequest"]["Key"])?;
                        (key, item_size(key))
                    };
                    let t = item_touch(&schema, item, request)?;
                    plan.touches.push(t.writing(size, Write::Standard));
                }
            }
        }
        "TransactGetItems" => {
            for (kind, action) in transact_items(body) {
                if kind != "Get" {
                    return None;
                }
                let schema = schema_of(action["TableName"].as_str()?)?;
                let t = item_touch(&schema, obj(&action["Key"])?, action)?;
                plan.touches.push(t.reading(Read::Transactional));
            }
        }
        "TransactWriteItems" => {
            for (kind, action) in transact_items(body) {
                let schema = schema_of(action["TableName"].as_str()?)?;
                plan.touches
                    .push(transact_write_touch(&schema, kind, action)?);
            }
        }
        _ => return None,
    }
    Some(plan)
}

fn transact_write_touch(schema: &Arc<TableSchema>, kind: &str, action: &Value) -> Option<Touch> {
    let tx = Write::Transactional;
    Some(match kind {
        "Put" => {
            let item = obj(&action["Item"])?;
            item_touch(schema, item, action)?.writing(item_size(item), tx)
        }
        "Update" => {
            let key = obj(&action["Key"])?;
            item_touch(schema, key, action)?.writing(update_estimate(key, action), tx)
        }
        "Delete" => {
            let key = obj(&action["Key"])?;
            item_touch(schema, key, action)?.writing(item_size(key), tx)
        }
        "ConditionCheck" => {
            // A condition check reads the item transactionally and writes
            // nothing: charged as a transactional read of (at least) one
            // 4 KB unit, before forwarding since its answer carries no item.
            let key = obj(&action["Key"])?;
            let mut t = item_touch(schema, key, action)?;
            t.size = item_size(key);
            t.rcu = read_units(t.size, Read::Transactional);
            t
        }
        _ => return None,
    })
}

fn item_touch(
    schema: &Arc<TableSchema>,
    item: &Map<String, Value>,
    element: &Value,
) -> Option<Touch> {
    let partition = schema.partition_of(item)?;
    Some(Touch {
        schema: schema.clone(),
        index: None,
        budget: BudgetKey {
            resource: schema.name.clone(),
            partition: display(partition),
        },
        item: Some(schema.item_id(item)?),
        wcu: 0.0,
        rcu: 0.0,
        read: None,
        size: 0,
        element: element.clone(),
    })
}

impl Touch {
    fn writing(mut self, size: u64, kind: Write) -> Touch {
        self.size = size;
        self.wcu = write_units(size, kind);
        self
    }

    fn reading(mut self, read: Read) -> Touch {
        self.read = Some(read);
        self
    }
}

/// GSI reads are always eventually consistent; otherwise `ConsistentRead`.
fn consistency(body: &Value, on_index: bool) -> Read {
    Read::from_consistent(!on_index && body["ConsistentRead"].as_bool() == Some(true))
}

fn query_touch(schema: &Arc<TableSchema>, body: &Value) -> Option<Touch> {
    let index = body["IndexName"].as_str().map(str::to_string);
    let (attr, resource) = match &index {
        Some(name) => (
            schema.indexes.get(name)?.hash_key.clone(),
            format!("{}/index/{name}", schema.name),
        ),
        None => (schema.hash_key.clone(), schema.name.clone()),
    };
    let value = query_partition(body, &attr)?;
    Some(Touch {
        schema: schema.clone(),
        read: Some(consistency(body, index.is_some())),
        index,
        budget: BudgetKey {
            resource,
            partition: display(&value),
        },
        item: None,
        wcu: 0.0,
        rcu: 0.0,
        size: 0,
        element: Value::Null,
    })
}

/// The partition-key value a Query names: `#pk = :v` (or `pk = :v`, either
/// way round) in `KeyConditionExpression`, or the legacy `KeyConditions`.
pub fn query_partition(body: &Value, attr: &str) -> Option<Value> {
    let Some(expr) = body["KeyConditionExpression"].as_str() else {
        let v = &body["KeyConditions"][attr]["AttributeValueList"][0];
        return (!v.is_null()).then(|| v.clone());
    };
    let names = body["ExpressionAttributeNames"].as_object();
    let values = body["ExpressionAttributeValues"].as_object()?;
    let resolve = |token: &str| -> Option<String> {
        if token.starts_with('#') {
            names?.get(token)?.as_str().map(str::to_string)
        } else {
            Some(token.to_string())
        }
    };
    let upper = expr.to_ascii_uppercase();
    let mut clauses = Vec::new();
    let mut rest = 0;
    while let Some(at) = upper[rest..].find(" AND ") {
        clauses.push(&expr[rest..rest + at]);
        rest += at + " AND ".len();
    }
    clauses.push(&expr[rest..]);
    for clause in clauses {
        let clause = clause.trim().trim_matches(['(', ')']).trim();
        let Some((left, right)) = clause.split_once('=') else {
            continue;
        };
        if left.ends_with(['<', '>', '!']) || right.starts_with('=') {
            continue;
        }
        let (left, right) = (left.trim(), right.trim());
        for (name, placeholder) in [(left, right), (right, left)] {
            if placeholder.starts_with(':') && resolve(name).as_deref() == Some(attr) {
                return values.get(placeholder).cloned();
            }
        }
    }
    None
}

/// What an UpdateItem writes, estimated from the request alone: the proxy
/// does not know the item's pre-image, while DynamoDB charges the larger of
/// the item before and after the update. The estimate is the key plus every
/// value and name the update carries; it is charged at least 1 KB (one write
/// unit), so small counter updates cost what they cost in DynamoDB, but an
/// update that grows an already large item is undercharged.
pub fn update_estimate(key: &Map<String, Value>, body: &Value) -> u64 {
    let values: u64 = body["ExpressionAttributeValues"]
        .as_object()
        .map(|m| m.values().map(value_size).sum())
        .unwrap_or(0);
    let names: u64 = body["ExpressionAttributeNames"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .map(|s| s.len() as u64)
                .sum()
        })
        .unwrap_or(0);
    let legacy: u64 = body["AttributeUpdates"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, update)| name.len() as u64 + value_size(&update["Value"]))
                .sum()
        })
        .unwrap_or(0);
    (item_size(key) + values + names + legacy).max(crate::capacity::WRITE_UNIT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            name: "t".into(),
            arn: "arn:t".into(),
            hash_key: "pk".into(),
            range_key: Some("sk".into()),
            on_demand: true,
            indexes: HashMap::new(),
        })
    }

    #[test]
    fn query_partition_forms() {
        let b = json!({"KeyConditionExpression": "#p = :v AND begins_with(sk, :s)",
            "ExpressionAttributeNames": {"#p": "pk"},
            "ExpressionAttributeValues": {":v": {"S": "SALE#1"}, ":s": {"S": "O"}}});
        assert_eq!(query_partition(&b, "pk"), Some(json!({"S": "SALE#1"})));
        let b = json!({"KeyConditionExpression": "sk BETWEEN :a AND :b and :v = pk",
            "ExpressionAttributeValues": {":v": {"S": "X"}, ":a": {"S": "1"}, ":b": {"S": "2"}}});
        assert_eq!(query_partition(&b, "pk"), Some(json!({"S": "X"})));
        let b = json!({"KeyConditionExpression": "pk <= :v", "ExpressionAttributeValues": {":v": {"S": "X"}}});
        assert_eq!(query_partition(&b, "pk"), None);
        let b = json!({"KeyConditions": {"pk": {"AttributeValueList": [{"S": "L"}], "ComparisonOperator": "EQ"}}});
        assert_eq!(query_partition(&b, "pk"), Some(json!({"S": "L"})));
    }

    #[test]
    fn transact_write_charges_each_item_to_its_key_at_double_rate() {
        let s = schema();
        let body = json!({"TransactItems": [
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "A"}, "sk": {"S": "1"}, "pad": {"S": "x".repeat(1500)}}}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "B"}, "sk": {"S": "c"}},
                "UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "B"}, "sk": {"S": "d"}}, "ConditionExpression": "attribute_exists(pk)"}}
        ]});
        let plan = build("TransactWriteItems", &body, &|_| Some(s.clone())).expect("plan");
        let t = &plan.touches;
        assert_eq!((t[0].budget.partition.as_str(), t[0].wcu), ("A", 4.0)); // 2 KB × 2
        assert_eq!((t[1].budget.partition.as_str(), t[1].wcu), ("B", 2.0)); // min 1 KB × 2
        assert_eq!((t[2].wcu, t[2].rcu), (0.0, 2.0));
        assert_ne!(t[1].item, t[2].item);
        assert_eq!(tables("TransactWriteItems", &body), vec!["t".to_string()]);
    }

    #[test]
    fn reads_are_charged_from_the_answer() {
        let s = schema();
        let body = json!({"TableName": "t", "KeyConditionExpression": "pk = :v",
            "ExpressionAttributeValues": {":v": {"S": "A"}}, "ConsistentRead": true});
        let plan = build("Query", &body, &|_| Some(s.clone())).expect("plan");
        let big = json!({"pk": {"S": "A"}, "pad": {"S": "x".repeat(3000)}});
        let answer = json!({"Items": [big.clone(), big]});
        let charges = read_charges(&plan, &answer);
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].1, 2.0); // ~6 KB total → 8 KB → 2 strong units
        let get = build(
            "GetItem",
            &json!({"TableName": "t", "Key": {"pk": {"S": "A"}, "sk": {"S": "1"}}}),
            &|_| Some(s.clone()),
        )
        .expect("plan");
        assert_eq!(read_charges(&get, &json!({}))[0].1, 0.5); // missing item: eventual minimum
    }
}
