//! The limits DynamoDB checks before it runs a transaction at all; each
//! broken one is a `ValidationException` and nothing is applied.

use crate::plan::Plan;
use crate::protocol::{self, ErrorAnswer};

/// "TransactWriteItems ... groups up to 100 action requests" (API reference,
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>).
pub const MAX_TRANSACT_ACTIONS: usize = 100;
/// "The aggregate size of the items in the transaction cannot exceed 4 MB."
pub const MAX_TRANSACT_BYTES: u64 = 4 * 1024 * 1024;

/// More than 100 actions: the model constraint on `TransactItems`.
pub fn too_many_actions() -> ErrorAnswer {
    protocol::validation(
        "1 validation error detected: Value at 'transactItems' failed to satisfy constraint: Member must have length less than or equal to 100",
    )
}

/// The limits DynamoDB checks before running a transaction (API reference,
/// TransactWriteItems): at most 100 actions, "no two actions can target the
/// same item", and "the aggregate size of the items in the transaction
/// cannot exceed 4 MB".
pub fn validate_transact_write(plan: &Plan) -> Option<ErrorAnswer> {
    if plan.touches.len() > MAX_TRANSACT_ACTIONS {
        return Some(too_many_actions());
    }
    let mut seen = std::collections::HashSet::new();
    for t in &plan.touches {
        if let Some(item) = &t.item {
            if !seen.insert(item.as_str()) {
                return Some(protocol::validation(
                    "Transaction request cannot include multiple operations on one item",
                ));
            }
        }
    }
    let total: u64 = plan.touches.iter().map(|t| t.size).sum();
    if total > MAX_TRANSACT_BYTES {
        return Some(protocol::validation(
            "Transaction request cannot be larger than 4 MB",
        ));
    }
    None
}
