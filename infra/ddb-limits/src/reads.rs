//! Charging reads once their answer is in: only then is the size of what
//! was read known ("DynamoDB read and write operations": GetItem rounds the
//! item up to 4 KB, Query and Scan round the total of the items read,
//! BatchGetItem and TransactGetItems round each item).

use serde_json::Value;

use crate::budget::BudgetKey;
use crate::capacity::{item_size, read_units, Read};
use crate::plan::Plan;
use crate::schema::display;

/// Read units to charge once the answer is in, per budget key.
pub fn read_charges(plan: &Plan, answer: &Value) -> Vec<(BudgetKey, f64)> {
    let size_of = |v: &Value| v.as_object().map(item_size).unwrap_or(0);
    let mut charges = Vec::new();
    match plan.op.as_str() {
        "GetItem" => {
            if let Some(t) = plan.touches.first() {
                let read = t.read.unwrap_or(Read::Eventual);
                charges.push((t.budget.clone(), read_units(size_of(&answer["Item"]), read)));
            }
        }
        "Query" => {
            if let Some(t) = plan.touches.first() {
                let total: u64 = answer["Items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(size_of)
                    .sum();
                let read = t.read.unwrap_or(Read::Eventual);
                charges.push((t.budget.clone(), read_units(total, read)));
            }
        }
        "TransactGetItems" => {
            let responses = answer["Responses"].as_array();
            for (i, t) in plan.touches.iter().enumerate() {
                let size = responses
                    .and_then(|r| r.get(i))
                    .map_or(0, |r| size_of(&r["Item"]));
                charges.push((t.budget.clone(), read_units(size, Read::Transactional)));
            }
        }
        "BatchGetItem" => {
            for t in &plan.touches {
                let found = answer["Responses"][&t.schema.name]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                    .find(|item| t.schema.item_id(item) == t.item);
                let size = found.map(item_size).unwrap_or(0);
                charges.push((
                    t.budget.clone(),
                    read_units(size, t.read.unwrap_or(Read::Eventual)),
                ));
            }
        }
        "Scan" => {
            if let Some((schema, index, read)) = &plan.scan {
                let (attr, resource) = match index
                    .as_ref()
                    .and_then(|i| schema.indexes.get(i).map(|s| (i, s)))
                {
                    Some((name, ix)) => {
                        (ix.hash_key.clone(), format!("{}/index/{name}", schema.name))
                    }
                    None => (schema.hash_key.clone(), schema.name.clone()),
                };
                let mut per_key: std::collections::BTreeMap<String, u64> = Default::default();
                for item in answer["Items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                {
                    if let Some(pk) = item.get(&attr) {
                        *per_key.entry(display(pk)).or_default() += item_size(item);
                    }
                }
                for (partition, bytes) in per_key {
                    let key = BudgetKey {
                        resource: resource.clone(),
                        partition,
                    };
                    charges.push((key, read_units(bytes, *read)));
                }
            }
        }
        _ => {}
    }
    charges
}
