//! `[server] trusted_proxies`: the load balancers whose forwarding headers scopegate believes,
//! and the client address it believes (SPEC "Behind a load balancer").

use std::net::IpAddr;

/// CIDR blocks, parsed at load. Empty (the default): scopegate is the edge and believes no one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// `["10.0.0.0/8", "127.0.0.1/32", "::1"]`; a bare address is its own /32 or /128.
    pub fn parse(blocks: &[String]) -> Result<TrustedProxies, String> {
        blocks
            .iter()
            .map(|b| {
                let (addr, bits) = match b.split_once('/') {
                    Some((a, n)) => (a, Some(n)),
                    None => (b.as_str(), None),
                };
                let ip: IpAddr = addr
                    .trim()
                    .parse()
                    .map_err(|_| format!("{b:?} is not a CIDR block like \"10.0.0.0/8\""))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    Some(n) => n
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|&n| n <= max)
                        .ok_or_else(|| format!("{b:?}: the prefix length must be 0 to {max}"))?,
                    None => max,
                };
                canonical_block(ip, bits).ok_or_else(|| {
                    format!("{b:?}: an IPv4-mapped block needs a prefix of at least /96")
                })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }

    /// The client scopegate believes for a connection from `peer` whose `X-Forwarded-For`
    /// values are `chain` (in order): the rightmost entry not itself a trusted proxy, walking
    /// left only through trusted ones; the peer when it is not trusted or the chain is empty.
    /// An entry that is not an address stops the walk at the last one believed.
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        chain: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut believed = peer;
        for entry in chain.rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_entry(entry.trim()) else {
                return believed;
            };
            believed = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        believed
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    entry.rsplit_once(':')?.0.parse().ok()
}

/// A block as it is compared: an IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`) is the IPv4
/// block it maps (`10.0.0.0/8`), as peers are compared by `canonical`. `None` for a mapped
/// block shorter than /96 (it would cover more than IPv4-mapped addresses).
fn canonical_block(ip: IpAddr, bits: u8) -> Option<(IpAddr, u8)> {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if bits >= 96 => Some((IpAddr::V4(v4), bits - 96)),
            Some(_) => None,
            None => Some((ip, bits)),
        },
        v4 => Some((v4, bits)),
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(net: &[u8], addr: &[u8], bits: u8) -> bool {
    // Never past the address, whatever `bits` says.
    let bits = (bits as usize).min(8 * net.len().min(addr.len()));
    let (whole, rest) = (bits / 8, (bits % 8) as u8);
    if net[..whole] != addr[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        net[whole] & mask == addr[whole] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_mapped_blocks_are_the_ipv4_blocks_they_map() {
        let t = TrustedProxies::parse(&["::ffff:127.0.0.1".into(), "::ffff:10.0.0.0/104".into()])
            .unwrap();
        for (addr, trusted) in [
            ("127.0.0.1", true),
            ("10.9.8.7", true),
            ("::ffff:10.1.2.3", true),
            ("127.0.0.2", false),
            ("11.0.0.1", false),
        ] {
            assert_eq!(t.contains(ip(addr)), trusted, "{addr}");
        }
        assert!(TrustedProxies::parse(&["::ffff:0.0.0.0/64".into()]).is_err());
    }

    #[test]
    fn blocks_match_by_prefix() {
        let t =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.128/25".into(), "::1".into()])
                .unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("192.168.1.200")));
        assert!(!t.contains(ip("192.168.1.100")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(TrustedProxies::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_entry() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let lb = ip("10.0.0.5");
        // From a trusted balancer: the entry it appended names the client.
        assert_eq!(t.client(lb, ["203.0.113.9"].into_iter()), ip("203.0.113.9"));
        // A client's own spoofed entries lie left of what the balancer appended.
        assert_eq!(
            t.client(lb, ["1.1.1.1, 203.0.113.9", "10.0.0.7"].into_iter()),
            ip("203.0.113.9")
        );
        // From anyone else the chain is not read at all.
        assert_eq!(
            t.client(ip("198.51.100.1"), ["1.1.1.1"].into_iter()),
            ip("198.51.100.1")
        );
        // No chain, or only trusted entries: the last one believed.
        assert_eq!(t.client(lb, std::iter::empty()), lb);
        assert_eq!(t.client(lb, ["10.0.0.9"].into_iter()), ip("10.0.0.9"));
        // Garbage stops the walk.
        assert_eq!(t.client(lb, ["1.1.1.1, junk"].into_iter()), lb);
        assert_eq!(
            t.client(lb, ["[2001:db8::1]:443"].into_iter()),
            ip("2001:db8::1")
        );
        assert!(TrustedProxies::default().is_empty());
    }
}
