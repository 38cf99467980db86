//! Rate limits per caller (governor's GCRA buckets), as a middleware
//! between `auth::identify` and `auth::require`: every configured key has
//! its own bucket (its `per_second` / `burst`, else `[security.rate_limit]`'s),
//! and requests without a valid key share one bucket per peer address, so
//! guessing keys is limited too. Past the burst the answer is 429 with
//! `Retry-After` (whole seconds, at least 1) and a JSON body, counted in
//! `nextbest_http_rate_limited_total` by route and caller (the key's name,
//! or `peer`). The peer table is swept of full buckets whenever it has
//! doubled since the last sweep, so it holds only addresses active within
//! one refill of their bucket.

use super::auth::Caller;
use super::ApiError;
use crate::config::RateLimitConfig;
use crate::keys::KeyRing;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Errors in the rate-limit settings.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("security.rate_limit.per_second must be a finite number >= 0, not {0}")]
    BadRate(f64),
}

/// The buckets.
pub struct RateLimits {
    /// By key index; None: that key is not limited.
    keys: Vec<Option<DefaultDirectRateLimiter>>,
    /// Requests without a valid key, by peer address; None: not limited.
    peers: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Peer-table size that triggers the next sweep.
    sweep_at: AtomicUsize,
    clock: DefaultClock,
    /// The default rate, for the start-up summary.
    per_second: f64,
    burst: u32,
}

/// Fewest peers kept before the table is swept.
const MIN_SWEEP: usize = 1024;

/// A bucket refilling `per_second` (0 → none) holding `burst` (0 → the rate rounded up).
fn quota(per_second: f64, burst: u32) -> Option<Quota> {
    if per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    let burst = if burst == 0 {
        per_second.ceil().min(u32::MAX as f64) as u32
    } else {
        burst
    };
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

impl RateLimits {
    /// One bucket per key and the peer table, from the settings.
    pub fn new(cfg: &RateLimitConfig, keys: &KeyRing) -> Result<RateLimits, RateLimitError> {
        if !cfg.per_second.is_finite() || cfg.per_second < 0.0 {
            return Err(RateLimitError::BadRate(cfg.per_second));
        }
        let keys = keys
            .keys()
            .iter()
            .map(|k| {
                quota(
                    k.per_second.unwrap_or(cfg.per_second),
                    k.burst.unwrap_or(cfg.burst),
                )
                .map(RateLimiter::direct)
            })
            .collect();
        Ok(RateLimits {
            keys,
            peers: quota(cfg.per_second, cfg.burst).map(RateLimiter::keyed),
            sweep_at: AtomicUsize::new(MIN_SWEEP),
            clock: DefaultClock::default(),
            per_second: cfg.per_second,
            burst: cfg.burst,
        })
    }

    /// Whether any bucket limits anything.
    pub fn is_on(&self) -> bool {
        self.peers.is_some() || self.keys.iter().any(Option::is_some)
    }

    /// `50/s, burst 100` or `off`, for the start-up summary.
    pub fn describe(&self) -> String {
        match quota(self.per_second, self.burst) {
            Some(q) => format!(
                "{}/s, burst {} per key or peer",
                self.per_second,
                q.burst_size()
            ),
            None if self.is_on() => "per key only".into(),
            None => "off".into(),
        }
    }

    /// Takes one request from the caller's bucket; Err(wait) when empty.
    pub fn check(&self, caller: &Caller) -> Result<(), Duration> {
        let outcome = match &caller.key {
            Some(k) => match self.keys.get(k.index).and_then(Option::as_ref) {
                Some(bucket) => bucket.check(),
                None => return Ok(()),
            },
            None => match &self.peers {
                Some(peers) => {
                    let peer = caller.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                    let r = peers.check_key(&peer);
                    self.sweep(peers);
                    r
                }
                None => return Ok(()),
            },
        };
        outcome.map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops full buckets once the table has doubled since the last sweep.
    fn sweep(&self, peers: &DefaultKeyedRateLimiter<IpAddr>) {
        let at = self.sweep_at.load(Ordering::Relaxed);
        if peers.len() < at {
            return;
        }
        peers.retain_recent();
        peers.shrink_to_fit();
        self.sweep_at
            .store((peers.len() * 2).max(MIN_SWEEP), Ordering::Relaxed);
    }
}

/// The middleware: 429 once the caller's bucket is empty.
pub async fn limit(
    State(limits): State<std::sync::Arc<RateLimits>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(caller) = req.extensions().get::<Caller>() else {
        return Ok(next.run(req).await);
    };
    match limits.check(caller) {
        Ok(()) => Ok(next.run(req).await),
        Err(wait) => {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str)
                .to_string();
            let who = caller
                .key
                .as_ref()
                .map_or_else(|| "peer".to_string(), |k| k.name.to_string());
            metrics::counter!(crate::metrics::HTTP_RATE_LIMITED, "route" => route, "caller" => who)
                .increment(1);
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            Err(ApiError::RateLimited {
                message: format!(
                    "rate limit reached ({}); retry in {secs} s",
                    match &caller.key {
                        Some(k) => format!("key `{}`", k.name),
                        None => "this address, no API key".to_string(),
                    }
                ),
                retry_after_secs: secs,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;
    use crate::keys::{hash_hex, Role};

    #[test]
    fn buckets_per_key_and_per_peer() {
        let keys = KeyRing::from_config(&[
            KeyConfig {
                name: "a".into(),
                role: Role::Client,
                sha256: hash_hex(b"a"),
                per_second: None,
                burst: None,
            },
            KeyConfig {
                name: "unlimited".into(),
                role: Role::Client,
                sha256: hash_hex(b"u"),
                per_second: Some(0.0),
                burst: None,
            },
        ])
        .expect("valid");
        let cfg = RateLimitConfig {
            per_second: 0.01,
            burst: 2,
        };
        let limits = RateLimits::new(&cfg, &keys).expect("valid");
        let a = Caller {
            key: keys.identify(b"a").cloned(),
            peer: None,
        };
        let u = Caller {
            key: keys.identify(b"u").cloned(),
            peer: None,
        };
        let peer = |ip: [u8; 4]| Caller {
            key: None,
            peer: Some(IpAddr::from(ip)),
        };
        assert!(limits.check(&a).is_ok() && limits.check(&a).is_ok());
        let wait = limits.check(&a).expect_err("the burst is spent");
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        for _ in 0..10 {
            assert!(limits.check(&u).is_ok(), "a key with rate 0 is not limited");
        }
        // peers have their own buckets, apart from the keys'
        assert!(limits.check(&peer([10, 0, 0, 1])).is_ok());
        assert!(limits.check(&peer([10, 0, 0, 1])).is_ok());
        assert!(limits.check(&peer([10, 0, 0, 1])).is_err());
        assert!(limits.check(&peer([10, 0, 0, 2])).is_ok());
        assert!(RateLimits::new(
            &RateLimitConfig {
                per_second: f64::NAN,
                burst: 0
            },
            &keys
        )
        .is_err());
        let off = RateLimits::new(&RateLimitConfig::default(), &KeyRing::default()).expect("ok");
        assert!(!off.is_on() && off.check(&peer([1, 2, 3, 4])).is_ok());
    }

    #[test]
    fn the_peer_table_is_swept() {
        let limits = RateLimits::new(
            &RateLimitConfig {
                per_second: 1e9,
                burst: 1,
            },
            &KeyRing::default(),
        )
        .expect("valid");
        for i in 0..5000u32 {
            let _ = limits.check(&Caller {
                key: None,
                peer: Some(IpAddr::from(i.to_be_bytes())),
            });
        }
        let peers = limits.peers.as_ref().expect("limited");
        assert!(peers.len() < 5000, "{} peers kept", peers.len());
    }
}
