//! Which address a request really came from, for per-IP rate limits.
//!
//! The answer depends on how the function is reached, so it is configured,
//! never guessed from headers a client can write:
//!
//! * on **AWS Lambda** the API Gateway / function URL request context
//!   carries the caller's address as AWS saw it: always used there;
//! * behind **proxies that append to `X-Forwarded-For`** (Knative: Kourier,
//!   the activator and the queue-proxy each append the address they saw),
//!   `CLIENT_IP_SOURCE=x-forwarded-for` takes the right-most address that is
//!   not one of our own proxies (`TRUSTED_PROXIES`, default private,
//!   loopback and link-local ranges). Entries left of it were written by
//!   the client and are ignored, so a spoofed header cannot buy a fresh
//!   budget;
//! * otherwise (`CLIENT_IP_SOURCE=peer`, the default) the TCP peer address.
//!
//! Addresses in `RATE_LIMIT_EXEMPT` (default loopback: the local stack, its
//! router and load tests all come from 127.0.0.1) get no per-IP limit; the
//! resolved address is then `None`, like an unknown one.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use http::request::Parts;
use ipnet::IpNet;

use crate::config::{parsed_or, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    Peer,
    ForwardedFor,
}

impl FromStr for ClientIpSource {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "peer" => Ok(Self::Peer),
            "x-forwarded-for" | "xff" => Ok(Self::ForwardedFor),
            other => Err(format!(
                "unknown client IP source {other:?}: use peer or x-forwarded-for"
            )),
        }
    }
}

/// A comma-separated list of networks ("10.0.0.0/8, ::1/128"; a bare
/// address is a network of one); empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<IpNet>);

impl Networks {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

impl FromStr for Networks {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("{part:?} is neither a network (10.0.0.0/8) nor an address")
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Networks)
    }
}

const LOOPBACK: &str = "127.0.0.0/8, ::1/128";
const PRIVATE: &str =
    "127.0.0.0/8, ::1/128, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, fc00::/7, fe80::/10, 100.64.0.0/10";

#[derive(Debug, Clone)]
pub struct ClientIpPolicy {
    pub source: ClientIpSource,
    /// Our own proxies, skipped when reading `X-Forwarded-For` from the right.
    pub trusted_proxies: Networks,
    /// Addresses that get no per-IP limit.
    pub exempt: Networks,
}

impl Default for ClientIpPolicy {
    fn default() -> Self {
        Self {
            source: ClientIpSource::Peer,
            trusted_proxies: PRIVATE.parse().unwrap_or_default(),
            exempt: LOOPBACK.parse().unwrap_or_default(),
        }
    }
}

impl ClientIpPolicy {
    /// `CLIENT_IP_SOURCE`, `TRUSTED_PROXIES`, `RATE_LIMIT_EXEMPT`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            source: parsed_or("CLIENT_IP_SOURCE", d.source)?,
            trusted_proxies: parsed_or("TRUSTED_PROXIES", d.trusted_proxies)?,
            exempt: parsed_or("RATE_LIMIT_EXEMPT", d.exempt)?,
        })
    }

    /// The rate-limited address of a request, `None` if unknown or exempt.
    pub fn resolve(&self, parts: &Parts) -> Option<IpAddr> {
        let ip = lambda_source_ip(parts).or_else(|| match self.source {
            ClientIpSource::Peer => peer(parts),
            ClientIpSource::ForwardedFor => self.right_most_untrusted(parts),
        })?;
        (!self.exempt.contains(&ip)).then_some(ip)
    }

    fn right_most_untrusted(&self, parts: &Parts) -> Option<IpAddr> {
        // Every hop appends one entry at the right, maybe on another header
        // line. Walk from the peer leftwards past our own proxies; the first
        // address that is not ours is the client. An unparsable entry before
        // that point means the chain cannot be trusted: no answer.
        let mut hops: Vec<Option<IpAddr>> = Vec::new();
        for line in parts.headers.get_all("x-forwarded-for") {
            match line.to_str() {
                Ok(line) => hops.extend(line.split(',').map(|e| e.trim().parse().ok())),
                Err(_) => hops.push(None),
            }
        }
        hops.push(peer(parts));
        for hop in hops.into_iter().rev() {
            let ip = hop?;
            if !self.trusted_proxies.contains(&ip) {
                return Some(ip);
            }
        }
        None
    }
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

fn lambda_source_ip(parts: &Parts) -> Option<IpAddr> {
    use lambda_http::request::RequestContext;
    let source = match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.as_deref(),
        _ => None,
    }?;
    source.parse().ok()
}

/// Extractor: the address per-IP limits apply to (see the module comment).
pub struct ClientIp(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    Arc<ClientIpPolicy>: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let policy = Arc::<ClientIpPolicy>::from_ref(state);
        Ok(ClientIp(policy.resolve(parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer_addr: Option<&str>, xff: &[&str]) -> Parts {
        let mut builder = http::Request::get("/");
        for line in xff {
            builder = builder.header("x-forwarded-for", *line);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        if let Some(addr) = peer_addr {
            let addr: SocketAddr = addr.parse().unwrap();
            parts.extensions.insert(ConnectInfo(addr));
        }
        parts
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn peer_mode_uses_the_tcp_peer_and_ignores_headers() {
        let policy = ClientIpPolicy::default();
        assert_eq!(
            policy.resolve(&parts(Some("203.0.113.9:5000"), &["198.51.100.1"])),
            ip("203.0.113.9")
        );
        // Loopback is exempt by default; unknown peers are None.
        assert_eq!(policy.resolve(&parts(Some("127.0.0.1:5000"), &[])), None);
        assert_eq!(policy.resolve(&parts(None, &[])), None);
    }

    #[test]
    fn forwarded_for_takes_the_right_most_address_that_is_not_ours() {
        let policy = ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        };
        // client-written spoof, the real client (appended by Kourier), then
        // the activator's pod address; the peer is the queue-proxy.
        let p = parts(
            Some("127.0.0.1:40000"),
            &["1.2.3.4, 198.51.100.7", "10.244.0.12"],
        );
        assert_eq!(policy.resolve(&p), ip("198.51.100.7"));
        // Only our own hops: the client is in-cluster, hence trusted: None.
        let p = parts(Some("127.0.0.1:40000"), &["10.0.0.5"]);
        assert_eq!(policy.resolve(&p), None);
        // Garbage to the left of the real client does not matter...
        let p = parts(Some("127.0.0.1:1"), &["nonsense, 198.51.100.7"]);
        assert_eq!(policy.resolve(&p), ip("198.51.100.7"));
        let p = parts(
            Some("127.0.0.1:1"),
            &["not-an-ip", "198.51.100.7, 10.1.1.1"],
        );
        assert_eq!(policy.resolve(&p), ip("198.51.100.7"));
        // ...but garbage to its right (where our proxies write) is a broken chain.
        let p = parts(Some("127.0.0.1:1"), &["198.51.100.7, nonsense"]);
        assert_eq!(policy.resolve(&p), None);
        // Without any header the peer itself is the client.
        let p = parts(Some("192.0.2.33:1"), &[]);
        assert_eq!(policy.resolve(&p), ip("192.0.2.33"));
        // An exempt client gets no per-IP limit either way.
        let p = parts(Some("127.0.0.1:1"), &["127.0.0.2"]);
        let mut all_trusted = policy.clone();
        all_trusted.trusted_proxies = Networks::default();
        assert_eq!(all_trusted.resolve(&p), None);
    }

    proptest::proptest! {
        /// Whatever a client writes into X-Forwarded-For, the answer is never
        /// one of our own proxies, never an exempt address, and never a
        /// panic; and a header that ends in a real client's address yields it.
        #[test]
        fn forwarded_for_never_yields_a_trusted_or_exempt_address(
            junk in proptest::collection::vec("[0-9a-f.:, x]{0,20}", 0..4),
            real in proptest::option::of((1u8..=223, 0u8..=255, 0u8..=255, 1u8..=254)),
        ) {
            let policy = ClientIpPolicy { source: ClientIpSource::ForwardedFor, ..ClientIpPolicy::default() };
            let mut lines: Vec<String> = junk;
            if let Some((a, b, c, d)) = real {
                lines.push(format!("{a}.{b}.{c}.{d}, 10.244.0.3"));
            }
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let got = policy.resolve(&parts(Some("127.0.0.1:9"), &refs));
            if let Some(ip) = got {
                proptest::prop_assert!(!policy.trusted_proxies.contains(&ip));
                proptest::prop_assert!(!policy.exempt.contains(&ip));
            }
            if let Some((a, b, c, d)) = real {
                let real: IpAddr = format!("{a}.{b}.{c}.{d}").parse().unwrap();
                if !policy.trusted_proxies.contains(&real) {
                    proptest::prop_assert_eq!(got, Some(real));
                }
            }
        }

        #[test]
        fn network_lists_parse_or_are_refused_without_panicking(raw in "\\PC{0,40}") {
            if let Ok(nets) = raw.parse::<Networks>() {
                // One network per non-empty comma-separated entry, no more.
                let entries = raw.split(',').filter(|e| !e.trim().is_empty()).count();
                proptest::prop_assert_eq!(nets.0.len(), entries);
            }
        }
    }

    #[test]
    fn networks_parse() {
        let nets: Networks = "10.0.0.0/8, 192.0.2.1, ::1".parse().unwrap();
        assert!(nets.contains(&"10.9.9.9".parse().unwrap()));
        assert!(nets.contains(&"192.0.2.1".parse().unwrap()));
        assert!(!nets.contains(&"192.0.2.2".parse().unwrap()));
        assert!(nets.contains(&"::1".parse().unwrap()));
        assert_eq!("".parse::<Networks>().unwrap(), Networks::default());
        assert!("10.0.0.0/33".parse::<Networks>().is_err());
        assert!("example.com".parse::<Networks>().is_err());
        assert!("bogus".parse::<ClientIpSource>().is_err());
        let defaults = ClientIpPolicy::default();
        assert!(defaults
            .trusted_proxies
            .contains(&"10.244.1.1".parse().unwrap()));
        assert!(defaults
            .trusted_proxies
            .contains(&"fd00::1".parse().unwrap()));
        assert!(!defaults
            .trusted_proxies
            .contains(&"8.8.8.8".parse().unwrap()));
        assert!(defaults.exempt.contains(&"127.0.0.1".parse().unwrap()));
        assert!(!defaults.exempt.contains(&"10.0.0.1".parse().unwrap()));
    }
}
