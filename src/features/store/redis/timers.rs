//! The trigger timers on Redis (`store::timers` has the design): the
//! records in the customer's slot (`<p>:{c:<id>}:tm`, written by
//! `update.lua`'s `TS`/`TU`/`TC` ops with the event's features), the
//! deadline index in shards of their own slot (`{<p>:timers:<k>}` and
//! `…:gen`, written by `timer_hint.lua` ahead of the record in the same
//! pipeline, claimed by `timer_claim.lua`, settled by
//! `timer_settle.lua`), and `timer_finish.lua` ending a fired episode.
//! Once-per-session markers are plain `SET NX PX` keys in the customer's
//! slot.

use super::keys::session_key;
use super::{Lane, RedisStore};
use crate::features::store::timers::{self, Claim, TimerOp, TimerRecord, TimerStore};
use crate::features::store::StoreError;
use async_trait::async_trait;
use redis::Value;

pub(super) const TIMER_HINT_LUA: &str = include_str!("timer_hint.lua");
pub(super) const TIMER_CLAIM_LUA: &str = include_str!("timer_claim.lua");
pub(super) const TIMER_SETTLE_LUA: &str = include_str!("timer_settle.lua");
pub(super) const TIMER_FINISH_LUA: &str = include_str!("timer_finish.lua");

/// A script's SHA1, computed once per script.
macro_rules! sha {
    ($src:expr) => {{
        static SHA: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| redis::Script::new($src).get_hash().to_string());
        SHA.as_str()
    }};
}

impl RedisStore {
    fn shards(&self) -> u32 {
        self.settings.timer_shards.max(1)
    }

    /// The index shard `k`'s sorted set and gen hash (one slot).
    fn shard_keys(&self, k: u32) -> (String, String) {
        let z = format!("{{{}:timers:{k}}}", self.settings.key_prefix);
        let g = format!("{z}:gen");
        (z, g)
    }

    /// The customer's timer records (in its slot).
    pub(super) fn timer_records_key(&self, customer: &str) -> String {
        format!("{}:tm", self.customer_key(customer))
    }

    /// Adds the index writes of `ops` (the `Start`s) of an event of
    /// `customer` to `pipe`, replies ignored; they go before the event's
    /// customer call, so the record is never written without its entry.
    pub(super) fn push_timer_hints(
        &self,
        pipe: &mut redis::Pipeline,
        customer: &str,
        ops: &[TimerOp],
    ) {
        for op in ops {
            if let TimerOp::Start { trigger, deadline } = op {
                let (z, g) = self.shard_keys(timers::shard_of(customer, self.shards()));
                pipe.cmd("EVALSHA")
                    .arg(sha!(TIMER_HINT_LUA))
                    .arg(2)
                    .arg(z)
                    .arg(g)
                    .arg(*deadline)
                    .arg(timers::member(trigger, customer))
                    .ignore();
            }
        }
    }
}

/// Parses a record's value, `episode \t started \t deadline`.
fn parse_record(v: &str) -> Option<TimerRecord> {
    let mut parts = v.rsplitn(3, '\t');
    let deadline = parts.next()?.parse().ok()?;
    let started = parts.next()?.parse().ok()?;
    let episode = parts.next()?.to_string();
    Some(TimerRecord {
        episode,
        started,
        deadline,
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Double(x) => Some(x.to_string()),
        _ => None,
    }
}

#[async_trait]
impl TimerStore for RedisStore {
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut pipe = redis::pipe();
        let claim_sha = sha!(TIMER_CLAIM_LUA);
        for k in 0..self.shards() {
            let (z, g) = self.shard_keys(k);
            pipe.cmd("EVALSHA")
                .arg(claim_sha)
                .arg(2)
                .arg(z)
                .arg(g)
                .arg(now_ms)
                .arg(now_ms.saturating_add(lease_ms))
                .arg(limit.max(1));
        }
        let replies = self.run_pipeline(&pipe, Lane::Background).await?;
        let mut out = Vec::new();
        for r in replies {
            let Value::Array(items) = r else {
                return Err(StoreError::Protocol("timer claim: not an array".into()));
            };
            for c in items.chunks(3) {
                let [m, score, gen] = c else {
                    return Err(StoreError::Protocol("timer claim: a short entry".into()));
                };
                let (Some(m), Some(score), Some(gen)) = (text(m), text(score), text(gen)) else {
                    return Err(StoreError::Protocol("timer claim: not text".into()));
                };
                let Some((trigger, customer)) = timers::parse_member(&m) else {
                    continue;
                };
                out.push(Claim {
                    trigger: trigger.to_string(),
                    customer_id: customer.to_string(),
                    due: score.parse::<f64>().map_or(now_ms, |x| x as i64),
                    gen: gen.parse().unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    async fn record(
        &self,
        customer_id: &str,
        trigger: &str,
    ) -> Result<Option<TimerRecord>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET")
            .arg(self.timer_records_key(customer_id))
            .arg(trigger);
        let mut replies = self.run_pipeline(&pipe, Lane::Background).await?;
        Ok(replies
            .pop()
            .as_ref()
            .and_then(text)
            .and_then(|v| parse_record(&v)))
    }

    async fn finish(
        &self,
        customer_id: &str,
        trigger: &str,
        episode: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(sha!(TIMER_FINISH_LUA))
            .arg(1)
            .arg(self.timer_records_key(customer_id))
            .arg(trigger)
            .arg(episode);
        let mut replies = self.run_pipeline(&pipe, Lane::Background).await?;
        Ok(replies
            .pop()
            .as_ref()
            .and_then(text)
            .and_then(|v| v.parse().ok()))
    }

    async fn settle(
        &self,
        claim: &Claim,
        next: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (z, g) = self.shard_keys(timers::shard_of(&claim.customer_id, self.shards()));
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(sha!(TIMER_SETTLE_LUA))
            .arg(2)
            .arg(z)
            .arg(g)
            .arg(timers::member(&claim.trigger, &claim.customer_id))
            .arg(claim.gen)
            .arg(next.map(|n| n.to_string()).unwrap_or_default())
            .arg(now_ms)
            .ignore();
        self.run_pipeline(&pipe, Lane::Background).await?;
        Ok(())
    }

    async fn pending(&self) -> Result<u64, StoreError> {
        let mut pipe = redis::pipe();
        for k in 0..self.shards() {
            pipe.cmd("ZCARD").arg(self.shard_keys(k).0);
        }
        let replies = self.run_pipeline(&pipe, Lane::Background).await?;
        Ok(replies
            .iter()
            .map(|v| match v {
                Value::Int(n) => (*n).max(0) as u64,
                _ => 0,
            })
            .sum())
    }

    async fn mark_once(
        &self,
        customer_id: &str,
        session: &str,
        trigger: &str,
        ttl_ms: i64,
        _now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = format!(
            "{}:t1:{trigger}",
            session_key(&self.customer_key(customer_id), session)
        );
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1));
        let mut replies = self.run_pipeline(&pipe, Lane::Background).await?;
        Ok(matches!(
            replies.pop(),
            Some(Value::Okay) | Some(Value::SimpleString(_))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_record;
    use crate::features::store::timers::TimerRecord;

    #[test]
    fn records_parse_with_any_episode_id() {
        assert_eq!(
            parse_record("e-1\t100\t200"),
            Some(TimerRecord {
                episode: "e-1".into(),
                started: 100,
                deadline: 200
            })
        );
        assert_eq!(
            parse_record("a\tb\t100\t200").map(|r| r.episode),
            Some("a\tb".into())
        );
        assert_eq!(parse_record("garbage"), None);
    }
}
