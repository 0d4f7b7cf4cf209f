//! Rate limits on spawning (governor): anonymous spawns per client IP, and a
//! global cap over everyone. Over either is a 429 with `Retry-After`.
//!
//! The client IP is the socket's peer, or, when the peer is a configured
//! trusted proxy, the right-most address in `X-Forwarded-For` that is not a
//! trusted proxy itself. A client is that address for IPv4, and its /64 for
//! IPv6 ([`client_key`]): one host holds a whole /64, so counting each of its
//! 2^64 addresses apart would be no limit at all.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::auth::Caller;

/// `[rate_limit]`: spawns (POST /binders/{b}, /api/spawn/, /spawn/...) only;
/// health, stats and the proxy are never limited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Anonymous spawns per client IP per minute (0: no limit).
    #[serde(default = "RateLimitConfig::default_anon")]
    pub anonymous_per_minute: u32,
    #[serde(default = "RateLimitConfig::default_anon_burst")]
    pub anonymous_burst: u32,
    /// Spawns per second from everyone together (0: no limit).
    #[serde(default = "RateLimitConfig::default_global")]
    pub global_per_second: u32,
    #[serde(default = "RateLimitConfig::default_global_burst")]
    pub global_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed (a reverse proxy in front).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Anonymous binders one client may hold at once (0: no cap).
    #[serde(default = "RateLimitConfig::default_anon_concurrent")]
    pub anonymous_concurrent: u32,
    /// Anonymous binders everyone together may hold at once (0: no cap).
    #[serde(default = "RateLimitConfig::default_anon_total")]
    pub anonymous_total: u32,
}

impl RateLimitConfig {
    fn default_anon() -> u32 {
        60
    }
    /// A classroom behind one NAT address clicking at once: 100 spawns.
    fn default_anon_burst() -> u32 {
        100
    }
    fn default_global() -> u32 {
        200
    }
    fn default_global_burst() -> u32 {
        400
    }
    /// The classroom of 100 behind one NAT address, each with a binder.
    fn default_anon_concurrent() -> u32 {
        100
    }
    fn default_anon_total() -> u32 {
        1000
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            anonymous_per_minute: Self::default_anon(),
            anonymous_burst: Self::default_anon_burst(),
            global_per_second: Self::default_global(),
            global_burst: Self::default_global_burst(),
            trusted_proxies: Vec::new(),
            anonymous_concurrent: Self::default_anon_concurrent(),
            anonymous_total: Self::default_anon_total(),
        }
    }
}

pub struct RateLimits {
    anonymous: Option<DefaultKeyedRateLimiter<IpAddr>>,
    global: Option<DefaultDirectRateLimiter>,
    trusted: Vec<IpAddr>,
    clock: DefaultClock,
}

/// Who a client is, for every per-client limit: an IPv4 address (an
/// IPv4-mapped IPv6 one too) as it is, an IPv6 address by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(octets))
            }
        },
    }
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> RateLimits {
        let anonymous = NonZeroU32::new(config.anonymous_per_minute).map(|rate| {
            let burst = NonZeroU32::new(config.anonymous_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        let global = NonZeroU32::new(config.global_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.global_burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimits {
            anonymous,
            global,
            trusted: config.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    /// The address a request comes from.
    /// Whether `peer` is a trusted proxy (its forwarded headers are believed).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.contains(&peer)
    }

    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusted.contains(&peer) {
            return peer;
        }
        let Some(list) = forwarded_for else {
            return peer;
        };
        list.rsplit(',')
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .find(|a| !self.trusted.contains(a))
            .unwrap_or(peer)
    }

    /// Admits one spawn, or says when to retry.
    pub fn check_spawn(&self, caller: &Caller, client: IpAddr) -> Result<(), RetryAfter> {
        if let Some(global) = &self.global {
            global
                .check()
                .map_err(|n| RetryAfter(n.wait_time_from(self.clock.now())))?;
        }
        if let (Caller::Anonymous, Some(limiter)) = (caller, &self.anonymous) {
            limiter
                .check_key(&client_key(client))
                .map_err(|n| RetryAfter(n.wait_time_from(self.clock.now())))?;
        }
        Ok(())
    }

    /// Forgets clients that have been quiet long enough (bounds memory).
    pub fn forget_quiet(&self) {
        if let Some(limiter) = &self.anonymous {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> RateLimits {
        RateLimits::new(&RateLimitConfig {
            anonymous_per_minute: 2,
            anonymous_burst: 2,
            global_per_second: 1000,
            global_burst: 1000,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_shares_one_bucket() {
        let l = limits(&[]);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_eq!(client_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(
            client_key(a),
            client_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            client_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(l.check_spawn(&Caller::Anonymous, a).is_ok());
        assert!(l.check_spawn(&Caller::Anonymous, b).is_ok());
        assert!(
            l.check_spawn(&Caller::Anonymous, "2001:db8:1:2::77".parse().unwrap())
                .is_err(),
            "a third address of the same /64 shares its bucket"
        );
    }

    #[test]
    fn anonymous_callers_are_limited_per_ip_keys_are_not() {
        let l = limits(&[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check_spawn(&Caller::Anonymous, a).is_ok());
        assert!(l.check_spawn(&Caller::Anonymous, a).is_ok());
        let RetryAfter(wait) = l.check_spawn(&Caller::Anonymous, a).unwrap_err();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(l.check_spawn(&Caller::Anonymous, b).is_ok(), "another IP");
        let key = Caller::Key {
            name: "alice".into(),
            role: crate::auth::Role::User,
        };
        for _ in 0..10 {
            assert!(l.check_spawn(&key, a).is_ok());
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(&["127.0.0.1"]);
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(
            l.client_ip(proxy, Some("1.2.3.4, 127.0.0.1")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l.client_ip(stranger, Some("1.2.3.4")), stranger);
        assert_eq!(l.client_ip(proxy, Some("garbage")), proxy);
        assert_eq!(l.client_ip(proxy, None), proxy);
    }
}
