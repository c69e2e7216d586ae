//! The proxy in process, in front of DynamoDB Local, driven by the real
//! `aws-sdk-dynamodb` client: every rule is checked against what the
//! DynamoDB documentation says the service does, and every error shape the
//! proxy emits is checked to parse into the SDK's modelled exception.
//!
//! Needs DynamoDB Local on `$DYNAMODB_ENDPOINT` (default
//! `http://127.0.0.1:8000`; `just backends` starts it).

mod common;
mod control;
mod faults;
mod throttling;
mod transactions;
