//! Which address a request really came from, for per-IP rate limits.
//!
//! The answer depends on how the function is reached, so it is configured,
//! never guessed from headers a client can write:
//!
//! * on **AWS Lambda** the API Gateway / function URL request context
//!   carries the caller's address as AWS saw it: always used there, and
//!   `X-Forwarded-For` is ignored whatever `CLIENT_IP_SOURCE` says;
//! * as a **plain process** (the local stack, its router, a container) the
//!   TCP peer (`CLIENT_IP_SOURCE=peer`, the default); headers are ignored;
//! * behind **proxies that append to `X-Forwarded-For`** (Knative: Kourier,
//!   the activator and the queue-proxy each append the address they saw),
//!   `CLIENT_IP_SOURCE=x-forwarded-for` walks the chain from the right, past
//!   our own proxies (`TRUSTED_PROXIES`), and takes the first address that
//!   is not ours. Entries left of it were written by the client and are
//!   ignored, so a forged header cannot buy a fresh budget.
//!
//! **Only loopback is trusted by default**: that is the queue-proxy in the
//! same pod, or the local router on the same machine. Trusting every
//! private range by default would let any client that reaches a function
//! from a private address (another pod, a host on the same LAN, anything
//! behind a NAT) name its own address in `X-Forwarded-For`. Under Knative,
//! set `TRUSTED_PROXIES` to the range the Kourier gateway and activator pods
//! get their addresses from (the cluster's pod CIDR, `10.244.0.0/16` on
//! kind). Left unset there, the first in-cluster hop is taken for the client
//! and all buyers share one per-IP budget: too strict, never spoofable, and
//! said at start-up.
//!
//! What is counted is the client's network, not its address: an IPv6 client
//! owns a whole /64 (`RATE_LIMIT_IPV6_PREFIX`), so counting per /128 would
//! give it 2^64 budgets. IPv4-mapped IPv6 addresses count as the IPv4
//! address they are.
//!
//! A chain that cannot be read (an entry where our proxies write that is not
//! an address) is counted under the TCP peer, never exempt: breaking the
//! header must not be a way out of the limit. Addresses in
//! `RATE_LIMIT_EXEMPT` (default loopback: the local stack, its router and
//! load tests all come from 127.0.0.1) get no per-IP limit; the resolved
//! address is then `None`, like an unknown one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use http::request::Parts;
use ipnet::IpNet;

use crate::config::{parsed_or, var, ConfigError};

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

    /// Loopback only: `127.0.0.0/8` and `::1`.
    pub fn loopback() -> Self {
        LOOPBACK.parse().unwrap_or_default()
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

/// The prefix length an IPv6 client is counted under: 1 to 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix(u8);

impl Ipv6Prefix {
    /// A /64 is what one IPv6 subscriber (one LAN, one host with SLAAC
    /// privacy addresses) is given: the smallest unit one client controls.
    pub const DEFAULT: Self = Self(64);

    pub fn new(len: u8) -> Result<Self, String> {
        if (1..=128).contains(&len) {
            Ok(Self(len))
        } else {
            Err(format!("an IPv6 prefix is 1 to 128 bits, not {len}"))
        }
    }

    /// The network `ip` belongs to, as an address (host bits zeroed).
    pub fn network_of(self, ip: Ipv6Addr) -> Ipv6Addr {
        let mask = u128::MAX << (128 - u32::from(self.0));
        Ipv6Addr::from(u128::from(ip) & mask)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim().trim_start_matches('/');
        let len: u8 = raw
            .parse()
            .map_err(|_| format!("{raw:?} is not a prefix length (e.g. 64)"))?;
        Self::new(len)
    }
}

#[derive(Debug, Clone)]
pub struct ClientIpPolicy {
    pub source: ClientIpSource,
    /// Our own proxies, skipped when reading `X-Forwarded-For` from the right.
    pub trusted_proxies: Networks,
    /// Addresses that get no per-IP limit.
    pub exempt: Networks,
    /// IPv6 clients are counted per network of this size.
    pub ipv6_prefix: Ipv6Prefix,
}

impl Default for ClientIpPolicy {
    fn default() -> Self {
        Self {
            source: ClientIpSource::Peer,
            trusted_proxies: Networks::loopback(),
            exempt: Networks::loopback(),
            ipv6_prefix: Ipv6Prefix::DEFAULT,
        }
    }
}

/// Where the counted address came from.
enum Origin {
    /// The client's own address, as far as we can tell.
    Client(IpAddr),
    /// The chain could not be read; this is the TCP peer, counted as is.
    BrokenChain(IpAddr),
}

impl ClientIpPolicy {
    /// `CLIENT_IP_SOURCE`, `TRUSTED_PROXIES`, `RATE_LIMIT_EXEMPT`,
    /// `RATE_LIMIT_IPV6_PREFIX`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let policy = Self {
            source: parsed_or("CLIENT_IP_SOURCE", d.source)?,
            trusted_proxies: parsed_or("TRUSTED_PROXIES", d.trusted_proxies)?,
            exempt: parsed_or("RATE_LIMIT_EXEMPT", d.exempt)?,
            ipv6_prefix: parsed_or("RATE_LIMIT_IPV6_PREFIX", d.ipv6_prefix)?,
        };
        if policy.source == ClientIpSource::ForwardedFor && var("TRUSTED_PROXIES").is_none() {
            tracing::warn!(
                "CLIENT_IP_SOURCE=x-forwarded-for with TRUSTED_PROXIES unset: only loopback \
                 is trusted, so the first proxy beyond it counts as the client and buyers \
                 share its per-IP budget; set TRUSTED_PROXIES to the proxies' range \
                 (under Knative, the cluster's pod CIDR)"
            );
        }
        Ok(policy)
    }

    /// The address a request's per-IP limit is counted under (an IPv6
    /// client's network, see the module comment); `None` if unknown or
    /// exempt.
    pub fn resolve(&self, parts: &Parts) -> Option<IpAddr> {
        let origin = match lambda_source_ip(parts) {
            Some(ip) => Origin::Client(ip),
            None => match self.source {
                ClientIpSource::Peer => Origin::Client(peer(parts)?),
                ClientIpSource::ForwardedFor => self.walk_forwarded_for(parts)?,
            },
        };
        let counted = match origin {
            Origin::Client(ip) if self.exempt.contains(&ip) => return None,
            Origin::Client(ip) | Origin::BrokenChain(ip) => ip,
        };
        Some(match counted {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(self.ipv6_prefix.network_of(v6)),
        })
    }

    /// Every hop appends one entry at the right, maybe on another header
    /// line. Walk from the peer leftwards past our own proxies; the first
    /// address that is not ours is the client. If all of them are ours, the
    /// left-most is (an in-cluster caller). An unreadable entry before that
    /// point means the chain is broken: the peer is counted instead.
    fn walk_forwarded_for(&self, parts: &Parts) -> Option<Origin> {
        let peer = peer(parts)?;
        if !self.trusted_proxies.contains(&peer) {
            return Some(Origin::Client(peer));
        }
        let lines: Vec<&http::HeaderValue> =
            parts.headers.get_all("x-forwarded-for").iter().collect();
        let mut left_most = peer;
        for line in lines.into_iter().rev() {
            let Ok(line) = line.to_str() else {
                return Some(Origin::BrokenChain(peer));
            };
            for entry in line.rsplit(',') {
                let Ok(hop) = entry.trim().parse::<IpAddr>() else {
                    return Some(Origin::BrokenChain(peer));
                };
                let hop = hop.to_canonical();
                if !self.trusted_proxies.contains(&hop) {
                    return Some(Origin::Client(hop));
                }
                left_most = hop;
            }
        }
        Some(Origin::Client(left_most))
    }
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical())
}

fn lambda_source_ip(parts: &Parts) -> Option<IpAddr> {
    use lambda_http::request::RequestContext;
    let source = match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.as_deref(),
        _ => None,
    }?;
    source.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Extractor: the address per-IP limits are counted under (see the module
/// comment).
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

    fn forwarded_for() -> ClientIpPolicy {
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        }
    }

    /// As documented for Knative on kind: the pod CIDR is ours.
    fn knative() -> ClientIpPolicy {
        ClientIpPolicy {
            trusted_proxies: "127.0.0.0/8, ::1, 10.244.0.0/16".parse().unwrap(),
            ..forwarded_for()
        }
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
    fn the_default_trusts_loopback_only() {
        let d = ClientIpPolicy::default();
        for ours in ["127.0.0.1", "127.9.9.9", "::1"] {
            assert!(d.trusted_proxies.contains(&ours.parse().unwrap()), "{ours}");
        }
        for theirs in [
            "10.244.1.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "8.8.8.8",
        ] {
            assert!(
                !d.trusted_proxies.contains(&theirs.parse().unwrap()),
                "{theirs}"
            );
        }
        assert_eq!(d.ipv6_prefix, Ipv6Prefix::DEFAULT);
    }

    #[test]
    fn a_private_range_client_cannot_spoof_its_address_with_the_defaults() {
        // A client reaching the function from a private address (another
        // pod, a LAN host, a NAT) forges X-Forwarded-For: it is counted
        // under its own address, in both modes.
        for client in [
            "10.1.2.3",
            "172.20.0.9",
            "192.168.7.7",
            "169.254.3.3",
            "100.64.9.9",
            "[fd12::7]",
            "[fe80::9]",
        ] {
            let peer_addr = format!("{client}:40000");
            let own: IpAddr = client.trim_matches(['[', ']']).parse().unwrap();
            let counted = match own {
                IpAddr::V6(v6) => IpAddr::V6(Ipv6Prefix::DEFAULT.network_of(v6)),
                v4 => v4,
            };
            for forged in [
                "198.51.100.1",
                "198.51.100.1, 10.0.0.1",
                "127.0.0.1",
                "garbage",
            ] {
                for policy in [ClientIpPolicy::default(), forwarded_for()] {
                    let got = policy.resolve(&parts(Some(&peer_addr), &[forged]));
                    assert_eq!(got, Some(counted), "{client} forging {forged:?}");
                }
            }
        }
        // Through the local router (loopback, trusted) the router's own
        // entry is the client, whatever the client wrote before it.
        let p = parts(Some("127.0.0.1:1"), &["198.51.100.1, 10.1.2.3"]);
        assert_eq!(forwarded_for().resolve(&p), ip("10.1.2.3"));
    }

    #[test]
    fn forwarded_for_takes_the_right_most_address_that_is_not_ours() {
        let policy = knative();
        // client-written spoof, the real client (appended by Kourier), then
        // the activator's pod address; the peer is the queue-proxy.
        let p = parts(
            Some("127.0.0.1:40000"),
            &["1.2.3.4, 198.51.100.7", "10.244.0.12"],
        );
        assert_eq!(policy.resolve(&p), ip("198.51.100.7"));
        // Only our own hops: the left-most is an in-cluster client.
        let p = parts(Some("127.0.0.1:40000"), &["10.244.0.5"]);
        assert_eq!(policy.resolve(&p), ip("10.244.0.5"));
        // Garbage to the left of the real client does not matter...
        let p = parts(Some("127.0.0.1:1"), &["nonsense, 198.51.100.7"]);
        assert_eq!(policy.resolve(&p), ip("198.51.100.7"));
        let p = parts(
            Some("127.0.0.1:1"),
            &["not-an-ip", "198.51.100.7, 10.244.1.1"],
        );
        assert_eq!(policy.resolve(&p), ip("198.51.100.7"));
        // Without any header the peer itself is the client.
        let p = parts(Some("192.0.2.33:1"), &[]);
        assert_eq!(policy.resolve(&p), ip("192.0.2.33"));
        // Without the pod CIDR trusted, the activator counts as the client:
        // too strict, never spoofable.
        let p = parts(
            Some("127.0.0.1:40000"),
            &["1.2.3.4, 198.51.100.7", "10.244.0.12"],
        );
        assert_eq!(forwarded_for().resolve(&p), ip("10.244.0.12"));
    }

    #[test]
    fn on_lambda_the_request_context_wins_and_headers_are_ignored() {
        use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
        use lambda_http::request::RequestContext;
        let lambda = |source: &str, xff: &[&str]| {
            let mut ctx = ApiGatewayV2httpRequestContext::default();
            ctx.http.source_ip = Some(source.to_owned());
            let mut p = parts(Some("127.0.0.1:1"), xff);
            p.extensions.insert(RequestContext::ApiGatewayV2(ctx));
            p
        };
        for policy in [ClientIpPolicy::default(), knative()] {
            let p = lambda("203.0.113.50", &["198.51.100.1, 10.244.0.1"]);
            assert_eq!(policy.resolve(&p), ip("203.0.113.50"));
            let p = lambda("2001:db8:5:6:7::1", &["198.51.100.1"]);
            assert_eq!(policy.resolve(&p), ip("2001:db8:5:6::"));
        }
    }

    #[test]
    fn an_unreadable_chain_is_counted_under_the_peer_never_exempt() {
        let policy = knative();
        for broken in [
            &["198.51.100.7, nonsense"][..],
            &["198.51.100.7,"],
            &["198.51.100.7", ""],
            &["198.51.100.7:443"],
            &["10.244.0.1, [::1]"],
        ] {
            // The peer is loopback, hence exempt as a client, but a broken
            // chain is counted all the same.
            let p = parts(Some("127.0.0.1:1"), broken);
            assert_eq!(policy.resolve(&p), ip("127.0.0.1"), "{broken:?}");
        }
        let mut p = parts(Some("127.0.0.1:1"), &[]);
        p.headers.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"198.51.100.7, \xff").unwrap(),
        );
        assert_eq!(policy.resolve(&p), ip("127.0.0.1"), "not UTF-8");
        // An exempt client with a readable chain stays exempt.
        let p = parts(Some("127.0.0.1:1"), &["127.0.0.2"]);
        assert_eq!(policy.resolve(&p), None);
    }

    #[test]
    fn ipv6_clients_are_counted_per_network() {
        let policy = ClientIpPolicy::default();
        let a = policy.resolve(&parts(Some("[2001:db8:1:2::1]:1"), &[]));
        let b = policy.resolve(&parts(Some("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1"), &[]));
        let other = policy.resolve(&parts(Some("[2001:db8:1:3::1]:1"), &[]));
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_eq!(a, b, "one /64, one budget");
        assert_ne!(a, other);
        // Through X-Forwarded-For too.
        let p = parts(Some("127.0.0.1:1"), &["2001:db8:1:2::beef"]);
        assert_eq!(forwarded_for().resolve(&p), a);
        // The prefix is configurable.
        let wide = ClientIpPolicy {
            ipv6_prefix: "48".parse().unwrap(),
            ..ClientIpPolicy::default()
        };
        assert_eq!(
            wide.resolve(&parts(Some("[2001:db8:1:3::1]:1"), &[])),
            ip("2001:db8:1::")
        );
        let exact = ClientIpPolicy {
            ipv6_prefix: Ipv6Prefix::new(128).unwrap(),
            ..ClientIpPolicy::default()
        };
        assert_eq!(
            exact.resolve(&parts(Some("[2001:db8::9]:1"), &[])),
            ip("2001:db8::9")
        );
        // An IPv4-mapped address is the IPv4 address it maps, not one /64
        // shared by every IPv4 client of a dual-stack listener.
        assert_eq!(
            policy.resolve(&parts(Some("[::ffff:198.51.100.7]:1"), &[])),
            ip("198.51.100.7")
        );
        assert_eq!(
            policy.resolve(&parts(Some("[::ffff:127.0.0.1]:1"), &[])),
            None,
            "mapped loopback is loopback"
        );
        for bad in ["0", "129", "x", ""] {
            assert!(bad.parse::<Ipv6Prefix>().is_err(), "{bad:?}");
        }
        assert_eq!("/56".parse::<Ipv6Prefix>(), Ipv6Prefix::new(56));
    }

    proptest::proptest! {
        /// Whatever a client writes into X-Forwarded-For, the answer is the
        /// peer (only for a chain that cannot be read) or an address that is
        /// neither one of our proxies nor exempt; never a panic; and a
        /// header that ends in a real client's address yields it.
        #[test]
        fn forwarded_for_never_yields_a_trusted_or_exempt_address(
            junk in proptest::collection::vec("[0-9a-f.:, x]{0,20}", 0..4),
            real in proptest::option::of((1u8..=223, 0u8..=255, 0u8..=255, 1u8..=254)),
        ) {
            let policy = knative();
            let mut lines: Vec<String> = junk;
            if let Some((a, b, c, d)) = real {
                lines.push(format!("{a}.{b}.{c}.{d}, 10.244.0.3"));
            }
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let peer: IpAddr = "127.0.0.1".parse().unwrap();
            let got = policy.resolve(&parts(Some("127.0.0.1:9"), &refs));
            if let Some(ip) = got {
                if ip != peer {
                    proptest::prop_assert!(!policy.exempt.contains(&ip));
                    // Only an all-ours chain yields one of ours: its left-most hop.
                    if policy.trusted_proxies.contains(&ip) {
                        let real_is_ours = real.is_none_or(|(a, b, c, d)| {
                            let real: IpAddr = format!("{a}.{b}.{c}.{d}").parse().unwrap();
                            policy.trusted_proxies.contains(&real)
                        });
                        proptest::prop_assert!(real_is_ours);
                    }
                }
            }
            if let Some((a, b, c, d)) = real {
                let real: IpAddr = format!("{a}.{b}.{c}.{d}").parse().unwrap();
                if !policy.trusted_proxies.contains(&real) {
                    proptest::prop_assert_eq!(got, Some(real));
                }
            }
        }

        /// Every IPv6 address of one network is counted as that network.
        #[test]
        fn one_network_one_key(net in proptest::num::u64::ANY, host_a in proptest::num::u64::ANY, host_b in proptest::num::u64::ANY) {
            let policy = ClientIpPolicy::default();
            let addr = |host: u64| {
                let v6 = Ipv6Addr::from((u128::from(net | 1 << 61) << 64) | u128::from(host));
                format!("[{v6}]:1")
            };
            let a = policy.resolve(&parts(Some(&addr(host_a)), &[]));
            let b = policy.resolve(&parts(Some(&addr(host_b)), &[]));
            proptest::prop_assert!(a.is_some());
            proptest::prop_assert_eq!(a, b);
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
        assert!(defaults.exempt.contains(&"127.0.0.1".parse().unwrap()));
        assert!(!defaults.exempt.contains(&"10.0.0.1".parse().unwrap()));
    }
}
