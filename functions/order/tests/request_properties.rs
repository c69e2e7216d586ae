//! Property tests on checkout's request types, through the real router on
//! the in-memory stores: whatever a client sends, the answer is one of the
//! contract's, never a 5xx, and a rejected request stores nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::client_ip::ClientIpPolicy;
use common::token::TokenSigner;
use inventory::sale::{SaleDefinition, SaleId};
use inventory::Inventory;

const PER_USER_LIMIT: u32 = 5;

struct App {
    router: Router,
    signer: TokenSigner,
    inventory: Inventory,
    sale: String,
    rt: tokio::runtime::Runtime,
}

fn app() -> App {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = common::config::Settings::memory();
    let signer = TokenSigner::generate(&settings.token_issuer, &settings.token_audience, 900);
    let inventory = rt
        .block_on(inventory::from_settings(&settings, Default::default()))
        .expect("memory inventory");
    let sale = "props".to_owned();
    let definition = SaleDefinition::new(
        &sale,
        "Property sale",
        10_000_000,
        Some(i64::from(PER_USER_LIMIT)),
        None,
        None,
        chrono::Utc::now(),
    )
    .expect("valid sale");
    rt.block_on(inventory.create_sale(definition))
        .expect("sale created");
    let state = order::OrderState {
        inventory: inventory.clone(),
        verifier: Arc::new(signer.verifier()),
        client_ip: Arc::new(ClientIpPolicy::default()),
        admissions: Default::default(),
    };
    let router = order::app(state, &common::http::HttpOptions { max_in_flight: 64 });
    App {
        router,
        signer,
        inventory,
        sale,
        rt,
    }
}

impl App {
    /// POSTs `body` as a new user; returns the status and the JSON body.
    fn checkout(&self, body: Vec<u8>, key: Option<&str>) -> (StatusCode, Value, String) {
        let user = ulid::Ulid::new().to_string();
        let token = self.signer.issue(&user, chrono::Utc::now().timestamp());
        let mut req = Request::post("/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let req = req.body(Body::from(body)).expect("request");
        self.rt.block_on(async {
            let response = self.router.clone().oneshot(req).await.expect("infallible");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                user,
            )
        })
    }

    fn orders_of(&self, user: &str) -> usize {
        let sale = SaleId::parse(&self.sale).expect("sale id");
        self.rt
            .block_on(self.inventory.user_orders(user, Some(&sale)))
            .expect("ledger readable")
            .len()
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn quantity_is_accepted_exactly_within_1_to_the_per_user_limit(q in prop_oneof![
        -10i64..20,
        any::<i64>(),
        Just(i64::from(u32::MAX) + 1),
    ]) {
        let app = app();
        let body = json!({ "sale_id": app.sale, "quantity": q }).to_string().into_bytes();
        let (status, reply, user) = app.checkout(body, None);
        if (1..=i64::from(PER_USER_LIMIT)).contains(&q) {
            prop_assert_eq!(status, StatusCode::CREATED, "{}", reply);
            prop_assert_eq!(&reply["quantity"], &json!(q));
            prop_assert_eq!(app.orders_of(&user), 1);
        } else {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", reply);
            prop_assert_eq!(error_code(&reply), "invalid_request");
            prop_assert_eq!(app.orders_of(&user), 0);
        }
    }

    #[test]
    fn idempotency_keys_are_accepted_exactly_when_1_to_64_visible_ascii(key in prop_oneof![
        "[!-~]{1,64}",
        "[!-~]{65,80}",
        "[ -~]{0,70}",
    ]) {
        let app = app();
        // A header value must be visible ASCII or space/tab to be sent at all.
        let body = json!({ "sale_id": app.sale }).to_string().into_bytes();
        let (status, reply, user) = app.checkout(body, Some(&key));
        let valid = (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            prop_assert_eq!(status, StatusCode::CREATED, "{:?}: {}", key, reply);
        } else {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}: {}", key, reply);
            prop_assert_eq!(error_code(&reply), "invalid_request");
            prop_assert_eq!(app.orders_of(&user), 0);
        }
    }

    #[test]
    fn any_json_body_gets_a_contract_answer_and_never_a_5xx(body in arbitrary_json()) {
        let app = app();
        let (status, reply, user) = app.checkout(body.to_string().into_bytes(), None);
        match status.as_u16() {
            201 => {
                prop_assert_eq!(app.orders_of(&user), 1);
            }
            400 | 404 => {
                let code = error_code(&reply);
                prop_assert!(code == "invalid_request" || code == "sale_not_found", "{}", reply);
                prop_assert_eq!(app.orders_of(&user), 0);
            }
            other => prop_assert!(false, "status {} for {}: {}", other, body, reply),
        }
    }

    #[test]
    fn arbitrary_bytes_never_make_a_5xx(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let app = app();
        let (status, reply, user) = app.checkout(bytes, None);
        prop_assert!(status.is_client_error(), "{}: {}", status, reply);
        prop_assert!(!error_code(&reply).is_empty());
        prop_assert_eq!(app.orders_of(&user), 0);
    }
}

/// JSON bodies shaped like a checkout, with every field sometimes wrong.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,80}".prop_map(Value::from),
        Just(Value::from("props")),
    ];
    let field = scalar.clone().prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::hash_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (
        proptest::option::of(field.clone()),
        proptest::option::of(field.clone()),
        proptest::option::of(("[a-z_]{1,12}", field)),
    )
        .prop_map(|(sale_id, quantity, extra)| {
            let mut body = serde_json::Map::new();
            if let Some(v) = sale_id {
                body.insert("sale_id".into(), v);
            }
            if let Some(v) = quantity {
                body.insert("quantity".into(), v);
            }
            if let Some((k, v)) = extra {
                body.insert(k, v);
            }
            Value::Object(body)
        })
}
