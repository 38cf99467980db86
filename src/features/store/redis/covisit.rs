//! Co-visitation in Redis (`store::covisit`): the event pipeline reads the
//! customer's list just before each visiting event's write (a `ZREVRANGE`
//! on the same connection, so it sees the list as that event found it);
//! the new events' co-visits, summed per item, are then filed by a second
//! pipeline (`ZINCRBY` per neighbour, cut to the best [`covisit::KEEP`],
//! expiring with the item) into `{p}:{i:<item>}:cv`, in the item's slot.
//! Reads are one `ZREVRANGE` per item.

use super::decode::{array, protocol, string};
use super::encode::fmt_f64;
use super::{Lane, RedisStore};
use crate::features::aggregate::Plan;
use crate::features::store::{covisit, StoreError};
use redis::Value;

impl RedisStore {
    /// The key of `item`'s neighbours.
    fn neighbours_key(&self, item: &str) -> String {
        format!("{}:cv", self.item_key(item))
    }

    /// Adds the read of the customer's list before `p`'s write, if `p`
    /// co-visits; whether it did.
    pub(super) fn push_previous_read(&self, pipe: &mut redis::Pipeline, p: &Plan) -> bool {
        if !(self.covisit && covisit::visits(p)) {
            return false;
        }
        let key = format!("{}:r:{}", self.customer_key(&p.customer_id), covisit::LIST);
        // one more than the steps: the event's own item may be among them
        pipe.cmd("ZREVRANGE")
            .arg(key)
            .arg(0)
            .arg(covisit::STEPS)
            .arg("WITHSCORES");
        true
    }

    /// Files the co-visits of the new events among `plans`, given each
    /// one's list read (`None`: not read, or a duplicate).
    pub(super) async fn file_event_covisits(
        &self,
        plans: &[Plan],
        lists: Vec<Option<Value>>,
    ) -> Result<(), StoreError> {
        let mut before: Vec<(usize, Vec<(String, i64)>)> = Vec::new();
        for (i, v) in lists.into_iter().enumerate() {
            if let Some(v) = v {
                before.push((i, scored_list(v)?));
            }
        }
        if before.is_empty() {
            return Ok(());
        }
        let mut pairs = Vec::new();
        for (i, list) in &before {
            pairs.extend(covisit::pairs_of(&plans[*i], list));
        }
        self.file_neighbours(&covisit::merge(pairs)).await
    }

    /// Adds `filings` to the items' neighbours (one pipeline).
    pub(super) async fn file_neighbours(
        &self,
        filings: &[covisit::Filing<'_>],
    ) -> Result<(), StoreError> {
        if filings.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for f in filings {
            let key = self.neighbours_key(f.item);
            for (n, w) in &f.add {
                pipe.cmd("ZINCRBY")
                    .arg(&key)
                    .arg(fmt_f64(*w))
                    .arg(*n)
                    .ignore();
            }
            let cut = -(covisit::KEEP as i64) - 1;
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(cut)
                .ignore();
            if self.settings.ttl_seconds > 0 {
                pipe.cmd("EXPIRE")
                    .arg(&key)
                    .arg(self.settings.ttl_seconds)
                    .ignore();
            }
        }
        let _: Vec<Value> = self.run_pipeline(&pipe, Lane::Background).await?;
        Ok(())
    }

    /// The best `top` neighbours of each of `ids`, in one pipeline.
    pub(super) async fn read_neighbours(
        &self,
        ids: &[String],
        top: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, StoreError> {
        if ids.is_empty() || top == 0 {
            return Ok(vec![Vec::new(); ids.len()]);
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("ZREVRANGE")
                .arg(self.neighbours_key(id))
                .arg(0)
                .arg(top - 1)
                .arg("WITHSCORES");
        }
        let replies = self.run_pipeline(&pipe, Lane::Request).await?;
        if replies.len() != ids.len() {
            return Err(protocol("neighbours: reply count differs from item count"));
        }
        replies.into_iter().map(scored).collect()
    }
}

/// A `WITHSCORES` reply as `(member, score)`, in order (RESP2 flat pairs
/// or RESP3 pairs).
fn scored(v: Value) -> Result<Vec<(String, f64)>, StoreError> {
    let items = array(v)?;
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let Some(first) = it.next() {
        let (m, s) = match first {
            Value::Array(pair) if pair.len() == 2 => {
                let mut p = pair.into_iter();
                (p.next(), p.next())
            }
            m => (Some(m), it.next()),
        };
        let (Some(m), Some(s)) = (m, s) else {
            return Err(protocol("neighbours: a member without a score"));
        };
        let s = string(s)?
            .parse::<f64>()
            .map_err(|_| protocol("neighbours: a score that is not a number"))?;
        out.push((string(m)?, s));
    }
    Ok(out)
}

/// A recent list read (`member → ts` scores) as `(member, ts)`.
fn scored_list(v: Value) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(scored(v)?
        .into_iter()
        .map(|(m, ts)| (m, ts as i64))
        .collect())
}
