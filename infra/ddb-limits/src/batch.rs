//! Splitting a batch the proxy can only partly admit, and folding the part
//! it kept back into upstream's answer, in the batch's own format.

use serde_json::{json, Map, Value};

use crate::plan::Plan;

/// Splits a batch into the part forwarded and the part kept back, in the
/// request's own format (`RequestItems` → `UnprocessedItems` for writes,
/// `UnprocessedKeys` for reads, with the table's other read parameters).
pub fn split_batch(
    plan: &Plan,
    body: &Value,
    kept: &[usize],
    held: &[usize],
) -> (Value, Value, &'static str) {
    let write = plan.op == "BatchWriteItem";
    let group = |indices: &[usize]| -> Value {
        let mut tables = Map::new();
        for &i in indices {
            let t = &plan.touches[i];
            let name = t.schema.name.clone();
            if write {
                let list = tables.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(t.element.clone());
                }
            } else {
                let spec = tables.entry(name.clone()).or_insert_with(|| {
                    let mut s = body["RequestItems"][&name].clone();
                    if !s.is_object() {
                        s = json!({});
                    }
                    s["Keys"] = json!([]);
                    s
                });
                if let Some(a) = spec["Keys"].as_array_mut() {
                    a.push(t.element.clone());
                }
            }
        }
        Value::Object(tables)
    };
    let mut forward = body.clone();
    forward["RequestItems"] = group(kept);
    let member = if write {
        "UnprocessedItems"
    } else {
        "UnprocessedKeys"
    };
    (forward, group(held), member)
}

/// Adds the kept-back part of a split batch to upstream's own unprocessed set.
pub fn merge_unprocessed(answer: &mut Value, member: &str, held: &Value) {
    let Some(held) = held.as_object() else { return };
    if !answer.is_object() {
        return;
    }
    if !answer[member].is_object() {
        answer[member] = json!({});
    }
    for (table, part) in held {
        let slot = &mut answer[member][table];
        if slot.is_null() {
            *slot = part.clone();
            continue;
        }
        let (dst, src) = if member == "UnprocessedKeys" {
            (
                slot.get_mut("Keys").and_then(Value::as_array_mut),
                part["Keys"].as_array(),
            )
        } else {
            (slot.as_array_mut(), part.as_array())
        };
        if let (Some(dst), Some(src)) = (dst, src) {
            dst.extend(src.iter().cloned());
        }
    }
}
