//! The list of management endpoints and the order they are tried in.
//!
//! Owns parsing of "host[:port]" entries and failover order (shuffle, static,
//! roundrobin). After a lost session the next attempt goes to the next
//! endpoint, so a dead plane costs one failed dial, not a timeout loop.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// DNS name or IP address; also the name the plane's certificate must carry.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses "host", "host:port", "[v6]" or "[v6]:port".
    pub fn parse(s: &str, default_port: u16) -> Result<Endpoint, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not host, host:port or [ipv6]:port");
        if s.is_empty() || s.contains('/') || s.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad()),
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// "host:port" for dialing, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.authority())
    }
}

/// Order in which management endpoints are tried (CloudStack's `host=...@order`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndpointOrder {
    /// Shuffled once per agent, so a fleet spreads over the planes.
    #[default]
    Shuffle,
    /// As listed: the first reachable one wins, the rest are standbys.
    Static,
    /// As listed, but each reconnect starts after the last one used.
    Roundrobin,
}

/// Cycles through endpoints in the configured order.
pub struct Endpoints {
    list: Vec<Endpoint>,
    order: EndpointOrder,
    next: usize,
}

impl Endpoints {
    pub fn new(mut list: Vec<Endpoint>, order: EndpointOrder) -> Endpoints {
        if order == EndpointOrder::Shuffle {
            list.shuffle(&mut rand::rng());
        }
        Endpoints {
            list,
            order,
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The endpoint to try now.
    pub fn current(&self) -> &Endpoint {
        &self.list[self.next % self.list.len()]
    }

    /// Called when a dial failed or a session on the current endpoint ended.
    /// The next attempt goes elsewhere, so a dead plane costs one attempt.
    /// Static order prefers the first endpoint: after a session on a standby
    /// ends, the preferred one is tried again first.
    pub fn failed(&mut self, was_established: bool) {
        let n = self.list.len();
        self.next = if self.order == EndpointOrder::Static && was_established && self.next != 0 {
            0
        } else {
            (self.next + 1) % n
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let e = Endpoint::parse("mgmt.example", 8250).unwrap();
        assert_eq!(e.authority(), "mgmt.example:8250");
        assert_eq!(Endpoint::parse("1.2.3.4:9", 1).unwrap().port, 9);
        assert_eq!(
            Endpoint::parse("[::1]:7", 1).unwrap().authority(),
            "[::1]:7"
        );
        assert_eq!(Endpoint::parse("::1", 5).unwrap().authority(), "[::1]:5");
        for bad in ["", "a:b", "a:0", "a/b:1", "[::1", "a b", ":80"] {
            assert!(Endpoint::parse(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn failover_cycles() {
        let list = vec![
            Endpoint::parse("a", 1).unwrap(),
            Endpoint::parse("b", 1).unwrap(),
        ];
        let mut eps = Endpoints::new(list, EndpointOrder::Static);
        assert_eq!(eps.current().host, "a");
        eps.failed(false);
        assert_eq!(eps.current().host, "b");
        // A session on the standby ended: back to the preferred endpoint.
        eps.failed(true);
        assert_eq!(eps.current().host, "a");
        // A session on the preferred one ended: over to the standby.
        eps.failed(true);
        assert_eq!(eps.current().host, "b");
        let list = vec![
            Endpoint::parse("a", 1).unwrap(),
            Endpoint::parse("b", 1).unwrap(),
        ];
        let mut rr = Endpoints::new(list, EndpointOrder::Roundrobin);
        rr.failed(true);
        rr.failed(true);
        assert_eq!(rr.current().host, "a");
    }
}
