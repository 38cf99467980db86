//! Co-visitation in Redis (`store::covisit`): the event pipeline reads the
//! customer's list just before each visiting event's write (a `ZREVRANGE`
//! on the same connection, so it sees the list as that event found it);
//! the new events' co-visits, summed per item, are then filed in the same
//! call as the batch's popularity (`RedisStore::apply`) into
//! `{p}:{i:<item>}:cv`, in the item's slot: a `ZINCRBY` per neighbour,
//! cut to the best [`covisit::KEEP`], expiring with the item. The
//! backfill's filings (an item's sums over the whole history) write an
//! item with no list yet by one `RESTORE` of its best [`covisit::KEEP`]
//! (a payload built here, `dump::zset_scores`): the list the `ZINCRBY`s
//! would leave, without inserting every neighbour; an item that has one
//! gets the `ZINCRBY`s. Reads are one `ZREVRANGE` per item.

use super::decode::{array, protocol, string};
use super::encode::fmt_f64;
use super::{Lane, RedisStore};
use crate::features::aggregate::Plan;
use crate::features::store::{covisit, dump, StoreError};
use redis::Value;

/// Neighbours filed per pipeline at most (a backfill's filings are many).
const PIPELINE_PAIRS: usize = 20_000;

/// `RESTORE` pipelines in flight at once.
const RESTORES_IN_FLIGHT: usize = 4;

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

    /// Adds to `pipe` the filing of the co-visits of the new events among
    /// `plans`, given each one's list read (`None`: not read, or a
    /// duplicate).
    pub(super) fn push_event_covisits(
        &self,
        pipe: &mut redis::Pipeline,
        plans: &[Plan],
        lists: Vec<Option<Value>>,
    ) -> Result<(), StoreError> {
        let mut before: Vec<(usize, Vec<(String, i64)>)> = Vec::new();
        for (i, v) in lists.into_iter().enumerate() {
            if let Some(v) = v {
                before.push((i, scored_list(v)?));
            }
        }
        let mut pairs = Vec::new();
        for (i, list) in &before {
            pairs.extend(covisit::pairs_of(&plans[*i], list));
        }
        for f in &covisit::merge(pairs) {
            self.push_filing(pipe, f);
        }
        Ok(())
    }

    /// Adds `filings` to the items' neighbours (the backfill's; see the
    /// module doc), in pipelines of at most [`PIPELINE_PAIRS`] neighbours.
    pub(super) async fn file_neighbours(
        &self,
        filings: &[covisit::Filing<'_>],
    ) -> Result<(), StoreError> {
        let merge: Vec<&covisit::Filing<'_>> = match self.restore_supported().await? {
            Some(limits) => self.restore_new_lists(filings, &limits).await?,
            None => filings.iter().collect(),
        };
        let mut pipe = redis::pipe();
        let mut pairs = 0;
        for f in merge {
            self.push_filing(&mut pipe, f);
            pairs += f.add.len();
            if pairs >= PIPELINE_PAIRS {
                self.run_filings(&pipe).await?;
                pipe = redis::pipe();
                pairs = 0;
            }
        }
        self.run_filings(&pipe).await
    }

    /// Writes the lists of the items of `filings` that have none yet by a
    /// `RESTORE` each (refused where the key exists; a few pipelines at
    /// once, so building the payloads overlaps Redis loading them); the
    /// filings refused.
    async fn restore_new_lists<'f, 'a>(
        &self,
        filings: &'f [covisit::Filing<'a>],
        limits: &dump::Limits,
    ) -> Result<Vec<&'f covisit::Filing<'a>>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let calls: Vec<_> = filings
            .chunks(PIPELINE_PAIRS / covisit::KEEP)
            .map(|chunk| self.restore_chunk(chunk, limits))
            .collect();
        let refused: Vec<Vec<&'f covisit::Filing<'a>>> = futures::stream::iter(calls)
            .buffered(RESTORES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(refused.into_iter().flatten().collect())
    }

    /// One pipeline of [`Self::restore_new_lists`].
    async fn restore_chunk<'f, 'a>(
        &self,
        chunk: &'f [covisit::Filing<'a>],
        limits: &dump::Limits,
    ) -> Result<Vec<&'f covisit::Filing<'a>>, StoreError> {
        let ttl_ms = self.settings.ttl_seconds.saturating_mul(1000);
        let mut pipe = redis::pipe();
        for f in chunk {
            let mut best = covisit::best(&f.add);
            pipe.cmd("RESTORE")
                .arg(self.neighbours_key(f.item))
                .arg(ttl_ms)
                .arg(dump::zset_scores(&mut best, limits));
        }
        let mut conn = self.connection(Lane::Background);
        let replies: Vec<redis::RedisResult<Value>> =
            pipe.ignore_errors().query_async(&mut conn).await?;
        if replies.len() != chunk.len() {
            return Err(protocol("neighbours: reply count differs from item count"));
        }
        let mut refused = Vec::new();
        for (f, r) in chunk.iter().zip(replies) {
            match r {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYKEY") => refused.push(f),
                Err(e) => return Err(StoreError::from(e)),
            }
        }
        Ok(refused)
    }

    /// Adds one filing to `pipe`: a `ZINCRBY` per neighbour, then the cut
    /// and the expiry.
    fn push_filing(&self, pipe: &mut redis::Pipeline, f: &covisit::Filing<'_>) {
        if f.add.is_empty() {
            return;
        }
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
