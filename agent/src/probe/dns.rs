//! The DNS probe: look a name up (A and AAAA in parallel) and check the answers.
//!
//! The resolver is configured so that every sample really asks the server: the response
//! cache is off (size 0, TTLs clamped to 0, and cleared before each lookup for good
//! measure), `/etc/hosts` is not consulted, and there are no resolver-level retries, so a
//! dead server shows up as a failed sample within one query rather than being papered
//! over. The per-query timeout is long; the invariant's timeout (applied by the caller)
//! is the one that decides.
//!
//! With `server` set, only that server is asked (UDP, and TCP for truncated replies);
//! otherwise the servers, search list and `ndots` come from `/etc/resolv.conf`, as for any
//! other process on the node.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::FutureExt;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::Name;

use super::{BuildError, Probe, ProbeFuture};
use crate::config::spec::DnsProbeSpec;
use crate::sample::{ErrorClass, Observation, ProbeError};

/// Where the system resolver configuration is read from.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Per-query timeout inside the resolver: long, so the invariant's timeout decides.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `dns` probe.
pub struct DnsProbe {
    resolver: TokioResolver,
    name: Name,
    /// The name as configured, for messages.
    display_name: String,
    /// `ip:port` of the server asked, or "the system resolver", for messages.
    server: String,
    min_answers: usize,
    expected: Vec<IpAddr>,
}

impl std::fmt::Debug for DnsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProbe")
            .field("name", &self.display_name)
            .field("server", &self.server)
            .field("min_answers", &self.min_answers)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl DnsProbe {
    /// Builds the probe for `spec`, reading `/etc/resolv.conf` when no server is given.
    pub fn new(spec: &DnsProbeSpec) -> Result<Self, BuildError> {
        Self::with_resolv_conf(spec, Path::new(RESOLV_CONF))
    }

    /// As [`DnsProbe::new`], with the system configuration read from `resolv_conf`.
    pub fn with_resolv_conf(spec: &DnsProbeSpec, resolv_conf: &Path) -> Result<Self, BuildError> {
        let name = Name::from_str(&spec.name).map_err(|e| BuildError::DnsName {
            name: spec.name.clone(),
            reason: e.to_string(),
        })?;
        let (config, ndots, server) = match spec.server {
            Some(addr) => (single_server(addr), 1, addr.to_string()),
            None => {
                let text =
                    std::fs::read_to_string(resolv_conf).map_err(|e| BuildError::ResolvConf {
                        path: resolv_conf.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                let system = parse_resolv_conf(&text).map_err(|reason| BuildError::ResolvConf {
                    path: resolv_conf.to_path_buf(),
                    reason,
                })?;
                (
                    system.config,
                    system.ndots,
                    "the system resolver".to_string(),
                )
            }
        };
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.ndots = ndots;
        options.timeout = QUERY_TIMEOUT;
        // hickory counts retries after the first try.
        options.attempts = 0;
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.use_hosts_file = ResolveHosts::Never;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder.build().map_err(|e| BuildError::Resolver {
            reason: e.to_string(),
        })?;
        Ok(DnsProbe {
            resolver,
            name,
            display_name: spec.name.clone(),
            server,
            min_answers: spec.min_answers,
            expected: spec.expected_addresses.clone(),
        })
    }

    async fn run(&self) -> Result<usize, ProbeError> {
        let dns = |message: String| ProbeError::new(ErrorClass::Dns, message);
        let name = &self.display_name;
        self.resolver.clear_cache();
        let answers: Vec<IpAddr> = match self.resolver.lookup_ip(self.name.clone()).await {
            Ok(lookup) => lookup.iter().collect(),
            Err(e) if e.is_no_records_found() => {
                if self.min_answers == 0 && self.expected.is_empty() {
                    return Ok(0);
                }
                let why = if e.is_nx_domain() {
                    " (the name does not exist)"
                } else {
                    ""
                };
                return Err(dns(format!("no addresses for {name}{why}")));
            }
            Err(NetError::Timeout) => {
                return Err(ProbeError::new(
                    ErrorClass::Timeout,
                    format!("no answer from {} for {name}", self.server),
                ));
            }
            Err(NetError::Dns(DnsError::ResponseCode(code))) => {
                return Err(dns(format!("{} answered {code} for {name}", self.server)));
            }
            Err(NetError::Io(e)) => {
                return Err(dns(format!("query {} for {name}: {e}", self.server)));
            }
            Err(e) => return Err(dns(format!("lookup {name} via {}: {e}", self.server))),
        };
        if answers.is_empty() && (self.min_answers > 0 || !self.expected.is_empty()) {
            return Err(dns(format!("no addresses for {name}")));
        }
        if answers.len() < self.min_answers {
            return Err(dns(format!(
                "{} addresses for {name}, expected at least {}; got {}",
                answers.len(),
                self.min_answers,
                list(&answers)
            )));
        }
        let missing: Vec<IpAddr> = self
            .expected
            .iter()
            .filter(|ip| !answers.contains(ip))
            .copied()
            .collect();
        if !missing.is_empty() {
            let missing: Vec<String> = missing.iter().map(|ip| ip.to_string()).collect();
            return Err(dns(format!(
                "answers for {name} are missing {}; got {}",
                missing.join(", "),
                list(&answers)
            )));
        }
        Ok(answers.len())
    }
}

impl Probe for DnsProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run()
            .map(|result| match result {
                Ok(count) => Observation::Ok {
                    value: Some(count as f64),
                },
                Err(e) => Observation::Failed(e),
            })
            .boxed()
    }
}

/// `[10.0.0.1, 10.0.0.2]`, capped so a huge answer cannot flood a message.
fn list(ips: &[IpAddr]) -> String {
    const MAX: usize = 8;
    let mut shown: Vec<String> = ips.iter().take(MAX).map(|ip| ip.to_string()).collect();
    if ips.len() > MAX {
        shown.push(format!("… {} more", ips.len() - MAX));
    }
    format!("[{}]", shown.join(", "))
}

/// A configuration that asks only `addr`, over UDP and (for truncated replies) TCP.
fn single_server(addr: SocketAddr) -> ResolverConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    ResolverConfig::from_name_servers(vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])])
}

/// What the probe takes from `/etc/resolv.conf`.
struct SystemConfig {
    config: ResolverConfig,
    ndots: usize,
}

/// Reads `nameserver`, `search`/`domain` and `options ndots:N` as the C library does:
/// the last `search` or `domain` line wins, unparsable nameservers are skipped.
fn parse_resolv_conf(text: &str) -> Result<SystemConfig, String> {
    let mut servers = Vec::new();
    let mut search: Vec<Name> = Vec::new();
    let mut ndots = 1;
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A link-local IPv6 server may carry a zone (`fe80::1%eth0`), which this
                // probe cannot use; skip it like any other unparsable entry.
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    servers.push(NameServerConfig::udp_and_tcp(ip));
                }
            }
            Some("search") | Some("domain") => {
                search = words.filter_map(|w| Name::from_str(w).ok()).collect();
            }
            Some("options") => {
                for option in words {
                    if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        ndots = std::cmp::min(n, 15);
                    }
                }
            }
            _ => {}
        }
    }
    if servers.is_empty() {
        return Err("it lists no usable nameserver".to_string());
    }
    Ok(SystemConfig {
        config: ResolverConfig::from_parts(None, search, servers),
        ndots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::testutil::guarded;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::UdpSocket;

    /// A tiny authoritative DNS server over UDP: answers A/AAAA queries for `name` with
    /// the configured addresses, NXDOMAIN for anything else (or for everything).
    struct TestDnsServer {
        addr: SocketAddr,
        queries: Arc<AtomicUsize>,
    }

    #[derive(Clone)]
    enum Zone {
        Answer { name: String, addrs: Vec<IpAddr> },
        NxDomain,
    }

    impl TestDnsServer {
        async fn start(zone: Zone) -> Self {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let queries = Arc::new(AtomicUsize::new(0));
            let counter = queries.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    if let Some(reply) = answer(&buf[..n], &zone) {
                        let _ = socket.send_to(&reply, from).await;
                    }
                }
            });
            TestDnsServer { addr, queries }
        }
    }

    /// Builds the reply to one query, or `None` for a malformed one.
    fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
        // Question: labels until a zero byte, then type and class.
        let mut i = 12;
        let mut labels = Vec::new();
        loop {
            let len = *query.get(i)? as usize;
            i += 1;
            if len == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_lowercase());
            i += len;
        }
        let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
        let question_end = i + 4;
        let qname = labels.join(".");

        let (rcode, addrs): (u8, Vec<IpAddr>) = match zone {
            Zone::Answer { name, addrs } if *name == qname => (0, addrs.clone()),
            _ => (3, vec![]),
        };
        let records: Vec<Vec<u8>> = addrs
            .iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), 1) => Some(v4.octets().to_vec()),
                (IpAddr::V6(v6), 28) => Some(v6.octets().to_vec()),
                _ => None,
            })
            .collect();

        let mut reply = Vec::new();
        reply.extend_from_slice(query.get(0..2)?); // id
        let rd = query.get(2)? & 0x01;
        reply.push(0x84 | rd); // QR, AA, RD copied
        reply.push(0x80 | rcode); // RA, rcode
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
        reply.extend_from_slice(&0u16.to_be_bytes());
        reply.extend_from_slice(&0u16.to_be_bytes());
        reply.extend_from_slice(query.get(12..question_end)?);
        for rdata in records {
            reply.extend_from_slice(&[0xC0, 0x0C]); // pointer to the question name
            reply.extend_from_slice(&qtype.to_be_bytes());
            reply.extend_from_slice(&1u16.to_be_bytes()); // IN
            reply.extend_from_slice(&300u32.to_be_bytes());
            reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            reply.extend_from_slice(&rdata);
        }
        Some(reply)
    }

    fn spec(name: &str, server: SocketAddr) -> DnsProbeSpec {
        DnsProbeSpec {
            name: name.to_string(),
            server: Some(server),
            min_answers: 1,
            expected_addresses: vec![],
        }
    }

    async fn observe(spec: &DnsProbeSpec) -> Observation {
        let probe = DnsProbe::new(spec).unwrap();
        guarded(probe.observe()).await
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[tokio::test]
    async fn answers_are_counted_and_every_sample_asks_the_server() {
        let server = TestDnsServer::start(Zone::Answer {
            name: "svc.x.test".into(),
            addrs: vec![
                v4(10, 1, 2, 3),
                v4(10, 1, 2, 4),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            ],
        })
        .await;
        let probe = DnsProbe::new(&spec("svc.x.test", server.addr)).unwrap();
        for round in 1..=3 {
            assert_eq!(
                guarded(probe.observe()).await,
                Observation::Ok { value: Some(3.0) }
            );
            // One A and one AAAA query per sample: nothing came from a cache.
            assert_eq!(server.queries.load(Ordering::SeqCst), 2 * round);
        }
    }

    #[tokio::test]
    async fn nxdomain_and_min_answers() {
        let server = TestDnsServer::start(Zone::NxDomain).await;
        match observe(&spec("gone.x.test", server.addr)).await {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::Dns);
                assert!(e.message.starts_with("no addresses for gone.x.test"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let mut zero = spec("gone.x.test", server.addr);
        zero.min_answers = 0;
        assert_eq!(observe(&zero).await, Observation::Ok { value: Some(0.0) });

        let server = TestDnsServer::start(Zone::Answer {
            name: "one.x.test".into(),
            addrs: vec![v4(10, 0, 0, 9)],
        })
        .await;
        let mut two = spec("one.x.test", server.addr);
        two.min_answers = 2;
        match observe(&two).await {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::Dns);
                assert_eq!(
                    e.message,
                    "1 addresses for one.x.test, expected at least 2; got [10.0.0.9]"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn expected_addresses_must_all_be_present() {
        let server = TestDnsServer::start(Zone::Answer {
            name: "api.x.test".into(),
            addrs: vec![v4(10, 0, 0, 2), v4(10, 0, 0, 3)],
        })
        .await;
        let mut s = spec("api.x.test", server.addr);
        s.expected_addresses = vec![v4(10, 0, 0, 3)];
        assert_eq!(observe(&s).await, Observation::Ok { value: Some(2.0) });

        s.expected_addresses = vec![v4(10, 0, 0, 1), v4(10, 0, 0, 2)];
        match observe(&s).await {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::Dns);
                assert_eq!(
                    e.message,
                    "answers for api.x.test are missing 10.0.0.1; got [10.0.0.2, 10.0.0.3]"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dead_server_fails_and_recovery_is_seen_at_once() {
        // A server that drops queries until told to answer: the sample never succeeds
        // (the caller's timeout ends it), and nothing the resolver remembers about the
        // silence delays the first good answer afterwards.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answering = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answering2 = answering.clone();
        let zone = Zone::Answer {
            name: "svc.x.test".into(),
            addrs: vec![v4(10, 1, 2, 3)],
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if !answering2.load(Ordering::SeqCst) {
                    continue;
                }
                if let Some(reply) = answer(&buf[..n], &zone) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        let probe = DnsProbe::new(&spec("svc.x.test", addr)).unwrap();
        for _ in 0..2 {
            let silent = tokio::time::timeout(Duration::from_millis(300), probe.observe()).await;
            assert!(
                !matches!(silent, Ok(Observation::Ok { .. })),
                "a silent server cannot give an answer: {silent:?}"
            );
        }
        answering.store(true, Ordering::SeqCst);
        let back = tokio::time::timeout(Duration::from_secs(2), probe.observe()).await;
        assert_eq!(back, Ok(Observation::Ok { value: Some(1.0) }));
    }

    #[tokio::test]
    async fn a_closed_port_never_succeeds() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead = socket.local_addr().unwrap();
        drop(socket);
        let probe = DnsProbe::new(&spec("svc.x.test", dead)).unwrap();
        match tokio::time::timeout(Duration::from_millis(500), probe.observe()).await {
            Ok(Observation::Failed(e)) => {
                assert!(
                    matches!(e.class, ErrorClass::Dns | ErrorClass::Timeout),
                    "{e}"
                );
                assert!(e.message.contains(&dead.to_string()), "{e}");
            }
            Ok(other) => panic!("{other:?}"),
            // The usual case: ICMP "port unreachable" is not reported on the resolver's
            // unconnected UDP socket, so the caller's timeout ends the sample.
            Err(_) => {}
        }
    }

    #[test]
    fn resolv_conf_is_parsed_like_libc() {
        let text = "# generated\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n\
                    search default.svc.cluster.local svc.cluster.local\n\
                    options ndots:5 timeout:2 ; comment\n";
        let system = parse_resolv_conf(text).unwrap();
        assert_eq!(system.ndots, 5);
        let (_, search, servers) = system.config.into_parts();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].ip, v4(10, 96, 0, 10));
        assert_eq!(search.len(), 2);

        assert!(parse_resolv_conf("search a\n").is_err());
    }

    #[test]
    fn unreadable_resolv_conf_is_a_build_error() {
        let mut s = spec("x.test", "127.0.0.1:53".parse().unwrap());
        s.server = None;
        let e = DnsProbe::with_resolv_conf(&s, Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(matches!(e, BuildError::ResolvConf { .. }));
        let text = e.to_string();
        assert!(
            text.contains("/nonexistent/resolv.conf") && text.contains("server"),
            "{text}"
        );
    }
}
