//! Injected faults: the ways real DynamoDB fails that DynamoDB Local never
//! does. Real DynamoDB does not lose an acknowledged write; what a client
//! does see is a service that is unreachable, slow, throttling, answering
//! 5xx, or whose answer is lost after the write committed. Each of those is
//! one knob here, set with `POST /_limits/faults` or [`crate::Proxy::set_faults`].
//!
//! # Order
//!
//! The counted faults form one queue, consumed in this fixed order by
//! successive matching requests: `drop_after_commit`, `drop_before`,
//! `error_500`, `throttle_next`, `throttle_request_next`. So `{"drop_after_commit": 1,
//! "throttle_next": 1, "operation": "TransactWriteItems"}` means: the next
//! transaction commits upstream and its answer is lost, and the SDK's retry
//! of it is throttled. A request that the head of the queue does not apply
//! to (`drop_after_commit` only applies to writes) passes untouched and
//! consumes nothing, so the order always holds. `drop_after_commit` is used
//! up only by a write that is really forwarded: one the proxy itself refuses
//! (conflict, throttle) is answered normally and leaves it pending.

use serde::{Deserialize, Serialize};

use crate::protocol;

/// The fault settings. Every field defaults to "no fault"; setting faults
/// replaces all of them at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Forward the next N write requests upstream (so they commit), then
    /// close the client's connection without answering.
    pub drop_after_commit: u32,
    /// Close the connection of the next N requests without forwarding them.
    pub drop_before: u32,
    /// Answer the next N requests `500 InternalServerError` without forwarding.
    pub error_500: u32,
    /// Answer the next N requests as throttled (the shapes of a real
    /// throttle: `ThrottlingException` with reasons, or a transaction
    /// cancelled with `ThrottlingError` on every action), without forwarding.
    pub throttle_next: u32,
    /// Answer the next N requests with a request-level throttle
    /// (`ThrottlingException` / `ProvisionedThroughputExceededException`
    /// with reasons, which the SDKs retry), transactions included: real
    /// DynamoDB can refuse a whole `TransactWriteItems` that way too (both
    /// are among its documented errors). For single-item operations this is
    /// the same as `throttle_next`.
    pub throttle_request_next: u32,
    /// Delay every answer by this many milliseconds (not counted).
    pub hold_answers_ms: u64,
    /// Accept requests but answer none (and forward none) until unfrozen.
    pub freeze: bool,
    /// Only requests of this operation (e.g. `TransactWriteItems`) are
    /// faulted; others pass. `None`: every item-level operation.
    pub operation: Option<String>,
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    None,
    DropAfterCommit,
    DropBefore,
    Error500,
    Throttle,
    ThrottleRequest,
}

impl Injected {
    /// The name used in stats.
    pub fn name(self) -> &'static str {
        match self {
            Injected::None => "none",
            Injected::DropAfterCommit => "drop_after_commit",
            Injected::DropBefore => "drop_before",
            Injected::Error500 => "error_500",
            Injected::Throttle => "throttle_next",
            Injected::ThrottleRequest => "throttle_request_next",
        }
    }
}

impl Faults {
    /// Does this fault set apply to an `op` request at all?
    pub fn applies_to(&self, op: &str) -> bool {
        protocol::is_data_plane(op) && self.operation.as_deref().is_none_or(|o| o == op)
    }

    /// The fault (if any) for the next `op` request, taken when it arrives.
    ///
    /// `drop_before`, `error_500` and `throttle_next` are consumed here.
    /// `drop_after_commit` is only reported: it is consumed by
    /// [`Faults::take_after_commit`] when the request is actually forwarded,
    /// so a write the proxy refuses (conflict, throttle) does not use it up.
    pub fn take_before(&mut self, op: &str) -> Injected {
        if !self.applies_to(op) {
            return Injected::None;
        }
        if self.drop_after_commit > 0 {
            return if protocol::is_write(op) {
                Injected::DropAfterCommit
            } else {
                Injected::None
            };
        }
        let queue: [(&mut u32, Injected); 4] = [
            (&mut self.drop_before, Injected::DropBefore),
            (&mut self.error_500, Injected::Error500),
            (&mut self.throttle_next, Injected::Throttle),
            (&mut self.throttle_request_next, Injected::ThrottleRequest),
        ];
        for (count, fault) in queue {
            if *count > 0 {
                *count -= 1;
                return fault;
            }
        }
        Injected::None
    }

    /// Consumes one `drop_after_commit` for an `op` request being forwarded
    /// now; `true` if its answer is to be dropped.
    pub fn take_after_commit(&mut self, op: &str) -> bool {
        if self.applies_to(op) && protocol::is_write(op) && self.drop_after_commit > 0 {
            self.drop_after_commit -= 1;
            return true;
        }
        false
    }

    /// Milliseconds to hold an `op` answer.
    pub fn hold_ms(&self, op: &str) -> u64 {
        if self.applies_to(op) {
            self.hold_answers_ms
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_drop_then_throttle_the_retry() {
        let mut f = Faults {
            drop_after_commit: 1,
            throttle_next: 1,
            operation: Some("TransactWriteItems".into()),
            ..Faults::default()
        };
        assert_eq!(f.take_before("GetItem"), Injected::None); // other operations pass
        assert_eq!(
            f.take_before("TransactWriteItems"),
            Injected::DropAfterCommit
        );
        // not used up until the request is really forwarded
        assert_eq!(
            f.take_before("TransactWriteItems"),
            Injected::DropAfterCommit
        );
        assert!(f.take_after_commit("TransactWriteItems"));
        assert_eq!(f.take_before("TransactWriteItems"), Injected::Throttle);
        assert_eq!(f.take_before("TransactWriteItems"), Injected::None);
        assert!(!f.take_after_commit("TransactWriteItems"));
    }

    #[test]
    fn a_read_does_not_jump_the_queue() {
        let mut f = Faults {
            drop_after_commit: 1,
            error_500: 1,
            ..Faults::default()
        };
        assert_eq!(f.take_before("GetItem"), Injected::None);
        assert_eq!(f.take_before("PutItem"), Injected::DropAfterCommit);
        assert!(f.take_after_commit("PutItem"));
        assert_eq!(f.take_before("GetItem"), Injected::Error500);
    }

    #[test]
    fn control_plane_is_never_faulted() {
        let mut f = Faults {
            drop_before: 5,
            hold_answers_ms: 100,
            ..Faults::default()
        };
        assert_eq!(f.take_before("CreateTable"), Injected::None);
        assert_eq!(f.hold_ms("DescribeTable"), 0);
        assert_eq!(f.take_before("Query"), Injected::DropBefore);
        assert_eq!(f.drop_before, 4);
    }

    #[test]
    fn commit_drop_then_throttle_every_retry_at_request_level() {
        let mut f = Faults {
            drop_after_commit: 1,
            throttle_request_next: 2,
            ..Faults::default()
        };
        assert_eq!(
            f.take_before("TransactWriteItems"),
            Injected::DropAfterCommit
        );
        assert!(f.take_after_commit("TransactWriteItems"));
        assert_eq!(
            f.take_before("TransactWriteItems"),
            Injected::ThrottleRequest
        );
        assert_eq!(
            f.take_before("TransactWriteItems"),
            Injected::ThrottleRequest
        );
        assert_eq!(f.take_before("TransactWriteItems"), Injected::None);
    }

    #[test]
    fn json_form() {
        let f: Faults =
            serde_json::from_str(r#"{"error_500": 2, "operation": "PutItem"}"#).unwrap_or_default();
        assert_eq!(f.error_500, 2);
        assert!(serde_json::from_str::<Faults>(r#"{"eror_500": 2}"#).is_err());
    }
}
