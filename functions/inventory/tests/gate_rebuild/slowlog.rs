//! Redis' SLOWLOG on every primary of a shape, for one test's while.

use common::redis_client::RedisConn;
use common::redis_testbed::RedisVariant;

/// The SLOWLOG of every primary of a Redis shape, for one test's while.
pub struct SlowLog {
    nodes: Vec<RedisConn>,
    saved: Vec<(String, String)>,
}

impl SlowLog {
    /// Logs every call slower than `micros` (and up to 20,000 of them) from
    /// now on.
    pub async fn start(variant: &RedisVariant, micros: u64) -> Self {
        let nodes = variant.nodes(true).await;
        let mut saved = Vec::new();
        for key in ["slowlog-log-slower-than", "slowlog-max-len"] {
            let mut c = nodes[0].clone();
            let got: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap();
            saved.push((key.to_owned(), got.get(1).cloned().unwrap_or_default()));
        }
        let log = Self { nodes, saved };
        log.set(&[
            ("slowlog-log-slower-than", micros.to_string()),
            ("slowlog-max-len", "20000".to_owned()),
        ])
        .await;
        for mut c in log.nodes.clone() {
            let _: String = redis::cmd("SLOWLOG")
                .arg("RESET")
                .query_async(&mut c)
                .await
                .unwrap();
        }
        log
    }

    async fn set(&self, pairs: &[(&str, String)]) {
        for mut c in self.nodes.clone() {
            for (key, value) in pairs {
                let _: String = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(key)
                    .arg(value)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
    }

    /// The calls logged that name `needle` (the command, and how long it
    /// ran, µs), and puts the configuration back. (Redis 7 logs the
    /// commands a script runs as well as the script.)
    pub async fn stop(self, needle: &str) -> Vec<(String, u64)> {
        let mut found = Vec::new();
        for mut c in self.nodes.clone() {
            let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
                .arg("GET")
                .arg(20_000)
                .query_async(&mut c)
                .await
                .unwrap();
            for e in entries {
                let redis::Value::Array(fields) = e else {
                    continue;
                };
                let micros = match fields.get(2) {
                    Some(redis::Value::Int(us)) => *us as u64,
                    _ => continue,
                };
                let Some(redis::Value::Array(args)) = fields.get(3) else {
                    continue;
                };
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match a {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        _ => String::new(),
                    })
                    .collect();
                if args.iter().any(|a| a.contains(needle)) {
                    let command = args.first().cloned().unwrap_or_default().to_uppercase();
                    found.push((command, micros));
                }
            }
        }
        let saved: Vec<(&str, String)> = self
            .saved
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        self.set(&saved).await;
        found
    }
}
