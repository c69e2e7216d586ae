//! The DynamoDB JSON protocol as the proxy speaks it: operation names and
//! the exact error answers real DynamoDB gives.
//!
//! An error is an HTTP status plus a JSON body whose `__type` names the
//! exception (`com.amazonaws.dynamodb.v20120810#Name`; validation errors use
//! `com.amazon.coral.validate#ValidationException`), see "Error handling with
//! DynamoDB", <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>.
//! Member names follow the service model the SDKs deserialize with (for
//! instance `TransactionCanceledException` has `Message` and
//! `CancellationReasons`, `ThrottlingException` has `message` and
//! `throttlingReasons`, `ProvisionedThroughputExceededException` has
//! `message` and `ThrottlingReasons`): a field spelt otherwise would be
//! silently dropped by the client.

use serde_json::{json, Value};

/// `__type` prefix of every DynamoDB service exception.
pub const PREFIX: &str = "com.amazonaws.dynamodb.v20120810#";
/// The `X-Amz-Target` prefix of the 2012-08-10 API.
pub const TARGET_PREFIX: &str = "DynamoDB_20120810.";
/// Content type of every request and answer.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// An answer the proxy makes itself instead of forwarding.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorAnswer {
    pub status: u16,
    pub body: Value,
}

impl ErrorAnswer {
    fn new(status: u16, name: &str, fields: Value) -> ErrorAnswer {
        let mut body = json!({ "__type": format!("{PREFIX}{name}") });
        if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
            b.extend(f.clone());
        }
        ErrorAnswer { status, body }
    }

    /// The exception name, without its namespace.
    pub fn name(&self) -> &str {
        self.body["__type"]
            .as_str()
            .and_then(|t| t.rsplit('#').next())
            .unwrap_or("")
    }
}

/// Whether the throttled resource was read or written (the middle word of a
/// throttling reason such as `TableWriteKeyRangeThroughputExceeded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What was throttled: a table or one of its global secondary indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// The table's ARN, as DescribeTable reports it.
    pub table_arn: String,
    /// A GSI name when the index (not the table) ran out.
    pub index: Option<String>,
    pub access: Access,
    /// On-demand (PAY_PER_REQUEST) or provisioned: decides the exception.
    pub on_demand: bool,
}

impl Throttled {
    /// `ResourceType + OperationType + LimitType`, e.g.
    /// `TableWriteKeyRangeThroughputExceeded` ("ThrottlingReason",
    /// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_ThrottlingReason.html>):
    /// the proxy only ever models the per-partition limit, `KeyRange...`.
    pub fn reason(&self) -> String {
        let resource = if self.index.is_some() {
            "Index"
        } else {
            "Table"
        };
        let access = match self.access {
            Access::Read => "Read",
            Access::Write => "Write",
        };
        format!("{resource}{access}KeyRangeThroughputExceeded")
    }

    /// `arn:...:table/NAME` or `arn:...:table/NAME/index/INDEX` ("Diagnosing
    /// throttling", throttling-diagnosing-workflow.html).
    pub fn resource(&self) -> String {
        match &self.index {
            Some(index) => format!("{}/index/{index}", self.table_arn),
            None => self.table_arn.clone(),
        }
    }
}

/// Message of a throttled on-demand table (the `ThrottlingError` text in
/// "TransactionCanceledException",
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>).
pub const ON_DEMAND_THROTTLED: &str = "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically scaling your table or index so please try again shortly. If exceptions persist, check if you have a hot key: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html.";
/// Message of a throttled provisioned table (same page, `ProvisionedThroughputExceeded`).
pub const PROVISIONED_THROTTLED: &str = "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.";

/// A single-item (or batch) request refused for capacity.
///
/// On-demand tables answer `ThrottlingException`, provisioned tables
/// `ProvisionedThroughputExceededException`; both carry the list of
/// `ThrottlingReason`s ("Diagnosing throttling": "in Java, these include
/// ProvisionedThroughputExceededException, RequestLimitExceeded, or
/// ThrottlingException. Each exception includes ThrottlingReasons").
pub fn throttled(what: &[Throttled]) -> ErrorAnswer {
    let on_demand = what.first().is_none_or(|t| t.on_demand);
    let reasons: Vec<Value> = what
        .iter()
        .map(|t| json!({ "reason": t.reason(), "resource": t.resource() }))
        .collect();
    if on_demand {
        ErrorAnswer::new(
            400,
            "ThrottlingException",
            json!({ "message": ON_DEMAND_THROTTLED, "throttlingReasons": reasons }),
        )
    } else {
        ErrorAnswer::new(
            400,
            "ProvisionedThroughputExceededException",
            json!({ "message": PROVISIONED_THROTTLED, "ThrottlingReasons": reasons }),
        )
    }
}

/// Why one action of a transaction was cancelled (`CancellationReason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// This action was fine; the transaction failed because of another.
    None,
    /// Another transaction is writing this item.
    Conflict,
    /// This action's partition is out of capacity.
    Throttled { on_demand: bool },
}

impl Cancel {
    /// The `Code` member.
    pub fn code(&self) -> &'static str {
        match self {
            Cancel::None => "None",
            Cancel::Conflict => "TransactionConflict",
            Cancel::Throttled { on_demand: true } => "ThrottlingError",
            Cancel::Throttled { on_demand: false } => "ProvisionedThroughputExceeded",
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Cancel::None => json!({ "Code": "None" }),
            Cancel::Conflict => json!({
                "Code": "TransactionConflict",
                "Message": "Transaction is ongoing for the item",
            }),
            Cancel::Throttled { on_demand } => json!({
                "Code": self.code(),
                "Message": if *on_demand { ON_DEMAND_THROTTLED } else { PROVISIONED_THROTTLED },
            }),
        }
    }
}

/// `TransactionCanceledException`: one reason per action, in request order
/// ("Transaction cancellation reasons are ordered in the order of requested
/// items, if an item has no error it will have None code and Null message").
pub fn transaction_canceled(reasons: &[Cancel]) -> ErrorAnswer {
    let codes: Vec<&str> = reasons.iter().map(Cancel::code).collect();
    ErrorAnswer::new(
        400,
        "TransactionCanceledException",
        json!({
            "Message": format!(
                "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                codes.join(", ")
            ),
            "CancellationReasons": reasons.iter().map(Cancel::to_json).collect::<Vec<_>>(),
        }),
    )
}

/// A PutItem/UpdateItem/DeleteItem on an item an in-flight transaction owns
/// ("Transaction conflict handling",
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling>).
pub fn transaction_conflict() -> ErrorAnswer {
    ErrorAnswer::new(
        400,
        "TransactionConflictException",
        json!({ "message": "Transaction is ongoing for the item" }),
    )
}

/// Same `ClientRequestToken`, different parameters, inside the 10-minute window.
pub fn idempotent_parameter_mismatch() -> ErrorAnswer {
    ErrorAnswer::new(
        400,
        "IdempotentParameterMismatchException",
        json!({ "Message": "DynamoDB rejected the request because you retried a request with a different payload but with an idempotent token that was already used." }),
    )
}

/// Same `ClientRequestToken` while the first request is still running.
pub fn transaction_in_progress() -> ErrorAnswer {
    ErrorAnswer::new(
        400,
        "TransactionInProgressException",
        json!({ "Message": "The transaction with the given request token is already in progress." }),
    )
}

/// A request DynamoDB refuses to run at all.
pub fn validation(message: &str) -> ErrorAnswer {
    ErrorAnswer {
        status: 400,
        body: json!({
            "__type": "com.amazon.coral.validate#ValidationException",
            "message": message,
        }),
    }
}

/// The 500 the `error_500` fault answers (the SDKs retry it).
pub fn internal_server_error() -> ErrorAnswer {
    ErrorAnswer::new(
        500,
        "InternalServerError",
        json!({ "message": "Internal server error" }),
    )
}

/// The operation named by `X-Amz-Target: DynamoDB_20120810.<Op>`.
pub fn operation(target: &str) -> Option<&str> {
    target
        .strip_prefix(TARGET_PREFIX)
        .filter(|op| !op.is_empty())
}

/// Operations that change items (the ones `drop_after_commit` applies to).
pub fn is_write(op: &str) -> bool {
    matches!(
        op,
        "PutItem"
            | "UpdateItem"
            | "DeleteItem"
            | "BatchWriteItem"
            | "TransactWriteItems"
            | "ExecuteStatement"
            | "BatchExecuteStatement"
            | "ExecuteTransaction"
    )
}

/// Item-level operations. Only these are throttled or faulted: control-plane
/// calls (CreateTable, DescribeTable, ...) always pass, so a test can set up
/// and inspect its tables through a proxy that is misbehaving on purpose.
pub fn is_data_plane(op: &str) -> bool {
    is_write(op)
        || matches!(
            op,
            "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(on_demand: bool) -> Throttled {
        Throttled {
            table_arn: "arn:aws:dynamodb:us-east-1:1:table/t".into(),
            index: None,
            access: Access::Write,
            on_demand,
        }
    }

    #[test]
    fn throttling_shapes_follow_the_billing_mode() {
        let od = throttled(&[hot(true)]);
        assert_eq!(od.name(), "ThrottlingException");
        assert_eq!(
            od.body["throttlingReasons"][0]["reason"],
            "TableWriteKeyRangeThroughputExceeded"
        );
        let prov = throttled(&[hot(false)]);
        assert_eq!(prov.name(), "ProvisionedThroughputExceededException");
        assert_eq!(
            prov.body["ThrottlingReasons"][0]["resource"],
            "arn:aws:dynamodb:us-east-1:1:table/t"
        );
        let index = Throttled {
            index: Some("byUser".into()),
            access: Access::Read,
            ..hot(true)
        };
        assert_eq!(index.reason(), "IndexReadKeyRangeThroughputExceeded");
        assert_eq!(
            index.resource(),
            "arn:aws:dynamodb:us-east-1:1:table/t/index/byUser"
        );
    }

    #[test]
    fn cancellation_message_lists_codes_in_order() {
        let a = transaction_canceled(&[Cancel::None, Cancel::Throttled { on_demand: true }]);
        assert_eq!(
            a.body["Message"],
            "Transaction cancelled, please refer cancellation reasons for specific reasons [None, ThrottlingError]"
        );
        assert_eq!(a.body["CancellationReasons"][0], json!({"Code": "None"}));
        assert_eq!(a.body["CancellationReasons"][1]["Code"], "ThrottlingError");
        let c = transaction_canceled(&[Cancel::Conflict]);
        assert_eq!(
            c.body["CancellationReasons"][0]["Message"],
            "Transaction is ongoing for the item"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(operation("DynamoDB_20120810.PutItem"), Some("PutItem"));
        assert_eq!(operation("DynamoDB_20120810."), None);
        assert_eq!(operation("Other.PutItem"), None);
        assert!(is_data_plane("TransactGetItems"));
        assert!(!is_data_plane("CreateTable"));
    }
}
