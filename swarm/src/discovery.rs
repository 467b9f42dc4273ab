//! Peer discovery: static multiaddrs and every A/AAAA record of a DNS name (the headless Service),
//! resolved again every interval. `/dns*/` names are resolved here, not by the transport, because
//! a `/dns4/` multiaddr would only ever dial one of the records.

use std::net::{IpAddr, SocketAddr};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// Upper bound on addresses taken from one resolution round.
pub const MAX_ADDRS: usize = 1024;

/// `/ip4/a.b.c.d/tcp/port` for a socket address.
pub fn to_multiaddr(sa: SocketAddr) -> Multiaddr {
    let ip = match sa.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(sa.port()))
}

/// Parses a peer given on the command line: a multiaddr (`/ip4/10.0.0.5/tcp/4001`,
/// `/dns4/node-a/tcp/4001`), `ip:port`, `[v6]:port` or `host:port` (resolved at every discovery round).
pub fn parse_peer(s: &str) -> Option<Multiaddr> {
    if s.starts_with('/') {
        return s.parse().ok();
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(to_multiaddr(sa));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then(|| {
        Multiaddr::empty()
            .with(Protocol::Dns(host.to_owned().into()))
            .with(Protocol::Tcp(port))
    })
}

/// Resolves the static peers and the DNS name into dialable addresses (duplicates removed,
/// at most [`MAX_ADDRS`]). Names that do not resolve are skipped; the next round retries.
pub async fn resolve(peers: &[Multiaddr], dns: Option<&(String, u16)>) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for p in peers {
        match split_dns(p) {
            Some((host, port, want)) => {
                if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
                    out.extend(addrs.filter(|a| want.accepts(a.ip())).map(to_multiaddr));
                } else {
                    tracing::debug!(addr = %p, "peer name did not resolve");
                }
            }
            None => out.push(p.clone()),
        }
    }
    if let Some((name, port)) = dns {
        match tokio::net::lookup_host((name.as_str(), *port)).await {
            Ok(addrs) => out.extend(addrs.map(to_multiaddr)),
            Err(error) => tracing::debug!(%name, %error, "peers dns name did not resolve"),
        }
    }
    out.sort();
    out.dedup();
    out.truncate(MAX_ADDRS);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Any,
}

impl Family {
    fn accepts(self, ip: IpAddr) -> bool {
        match self {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
            Family::Any => true,
        }
    }
}

/// `/dns4/host/tcp/port` (or dns, dns6) → (host, port, family); `None` for anything else.
fn split_dns(addr: &Multiaddr) -> Option<(String, u16, Family)> {
    let mut it = addr.iter();
    let (host, fam) = match it.next()? {
        Protocol::Dns(h) => (h.to_string(), Family::Any),
        Protocol::Dns4(h) => (h.to_string(), Family::V4),
        Protocol::Dns6(h) => (h.to_string(), Family::V6),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(port) => Some((host, port, fam)),
        _ => None,
    }
}

/// The IP of a `/ip4|ip6/...` address.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(v4) => Some(IpAddr::V4(v4)),
        Protocol::Ip6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    })
}

/// Whether a peer's advertised listen address is worth adding to the routing table, given the
/// address we see it at: loopback and unspecified addresses only when we reach it over loopback.
pub fn usable_listen_addr(listen: &Multiaddr, seen_at: Option<&Multiaddr>) -> bool {
    let Some(ip) = ip_of(listen) else {
        return false;
    };
    if ip.is_unspecified() {
        return false;
    }
    let seen_loopback = seen_at.and_then(ip_of).is_some_and(|i| i.is_loopback());
    !ip.is_loopback() || seen_loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_names_and_keeps_ip_addrs() {
        let peers: Vec<Multiaddr> = vec![
            "/ip4/10.0.0.1/tcp/4001".parse().unwrap(),
            "/dns4/localhost/tcp/4002".parse().unwrap(),
            "/ip4/10.0.0.1/tcp/4001".parse().unwrap(),
        ];
        let dns = ("localhost".to_owned(), 4003);
        let got = resolve(&peers, Some(&dns)).await;
        let want4002: Multiaddr = "/ip4/127.0.0.1/tcp/4002".parse().unwrap();
        let want4003: Multiaddr = "/ip4/127.0.0.1/tcp/4003".parse().unwrap();
        assert!(got.contains(&want4002), "{got:?}");
        assert!(got.contains(&want4003), "{got:?}");
        assert_eq!(
            got.iter()
                .filter(|a| a.to_string() == "/ip4/10.0.0.1/tcp/4001")
                .count(),
            1
        );
        assert!(!got.iter().any(|a| a.to_string().contains("dns")));
        let none = resolve(&[], Some(&("no-such-name.invalid".to_owned(), 1))).await;
        assert!(none.is_empty());
    }

    #[test]
    fn peers_parse_in_every_spelling() {
        let p = |s: &str| parse_peer(s).map(|a| a.to_string());
        assert_eq!(
            p("10.0.0.5:4001").as_deref(),
            Some("/ip4/10.0.0.5/tcp/4001")
        );
        assert_eq!(p("[::1]:4001").as_deref(), Some("/ip6/::1/tcp/4001"));
        assert_eq!(
            p("node-a.svc:4001").as_deref(),
            Some("/dns/node-a.svc/tcp/4001")
        );
        assert_eq!(
            p("/ip4/1.2.3.4/tcp/1").as_deref(),
            Some("/ip4/1.2.3.4/tcp/1")
        );
        assert_eq!(p("node-a"), None);
        assert_eq!(p("bad host:1"), None);
        assert_eq!(p("/nonsense"), None);
    }

    #[test]
    fn listen_addr_filter() {
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let pod: Multiaddr = "/ip4/10.1.2.3/tcp/1".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/1".parse().unwrap();
        assert!(usable_listen_addr(&pod, Some(&pod)));
        assert!(!usable_listen_addr(&lo, Some(&pod)));
        assert!(usable_listen_addr(&lo, Some(&lo)));
        assert!(!usable_listen_addr(&any, Some(&lo)));
    }
}
