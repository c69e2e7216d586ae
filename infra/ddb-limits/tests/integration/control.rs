//! The control API over HTTP, and the binary's CLI.

use std::process::Command;

use ddb_limits::Config;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn control_paths_answer_json() {
    let proxy = proxy(Config::default()).await;
    let base = format!("{}/_limits", proxy.endpoint());
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("{base}/{path}");
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.expect("get");
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.expect("json")
        }
    };
    assert_eq!(get("healthz").await["ok"], true);

    let set = http
        .post(format!("{base}/faults"))
        .body(r#"{"error_500": 1, "operation": "GetItem"}"#)
        .send()
        .await
        .expect("post faults");
    assert!(set.status().is_success());
    assert_eq!(get("faults").await["error_500"], 1);
    assert_eq!(proxy.faults().operation.as_deref(), Some("GetItem"));
    let bad = http
        .post(format!("{base}/faults"))
        .body(r#"{"eror_500": 1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(
        bad.status().as_u16(),
        400,
        "unknown fault names are refused"
    );

    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "ctl", false, false).await;
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("k", 1)))
        .send()
        .await
        .expect("put");
    let stats = get("stats").await;
    assert_eq!(stats["requests_by_op"]["PutItem"], 1);
    assert_eq!(stats["max_partition_wcu_per_s"], 1.0);
    let reset = http
        .post(format!("{base}/reset"))
        .send()
        .await
        .expect("reset");
    assert!(reset.status().is_success());
    assert_eq!(get("stats").await["requests"], 0);
    assert_eq!(get("config").await["partition_wcu"], 1000.0);
    let missing = http.get(format!("{base}/nope")).send().await.expect("get");
    assert_eq!(missing.status().as_u16(), 404);
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[test]
fn cli_helps_refuses_non_loopback_and_stops_on_its_own() {
    let bin = env!("CARGO_BIN_EXE_ddb-limits");
    let help = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--upstream",
        "--partition-wcu",
        "--partition-rcu",
        "--tx-latency-ms",
        "--max-seconds",
        "--stats-every",
        "/_limits/faults",
    ] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
    let refused = Command::new(bin)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("loopback"));
    let ran = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--max-seconds", "1"])
        .output()
        .expect("run");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        stderr.contains("--max-seconds reached") && stderr.contains("highest per partition key"),
        "{stderr}"
    );
}
