//! Popularity on Redis (the rule: `store::popularity`): filed after every
//! item write, listed by one script call.
//!
//! Reading is a pipeline of the live buckets' categories (`SUNION`) and
//! the global list, then one of the category lists: one `pop_read.lua`
//! call a list (each sums at most 12 buckets of a few hundred members, so
//! none holds the server long).
//!
//! An item's keys and the popularity keys live in different cluster slots
//! (the popularity keys share the hash tag `{<prefix>:pop}`: one slot, so
//! `pop_write.lua` and `pop_read.lua` each run in one), so the item's
//! `update.lua` cannot file it. Instead the write's pipeline ends with one
//! `HMGET` per item it added to a live bucket of (the item's category and
//! those buckets' counts, read after its writes, in its slot; a restored
//! backfill group is filed from the state it was given), and a second
//! pipeline, `pop_write.lua` calls of at most `POP_WRITE_CHUNK` items,
//! files the totals those replies give. The filed values
//! come from the item's deduped state, never from the event, so a filing
//! repeated or late files a total the bucket already has or had (it keeps
//! the greatest).
//!
//! The crash window: a process that dies between the two pipelines (or whose
//! `pop_write.lua` fails) leaves the item's new counts unfiled. The store
//! answers the write with an error (a transient one when Redis could not be
//! reached), so the consumer does not commit and the events come again;
//! their redelivery changes no count but its pipeline reads and files the
//! item again, repairing it. Writers that do not retry (an HTTP client that
//! gives up) leave the item's popularity short until its next write in
//! the same bucket, at most a bucket (2 h) later — or for good in that
//! bucket if none comes, which ages out with the window.

use super::decode::{array, protocol, string};
use super::{Lane, RedisStore};
use crate::features::aggregate::Plan;
use crate::features::definition::BUCKETS_PER_WINDOW;
use crate::features::store::popularity::{
    rank, Filing, PopularLists, PopularitySpec, KEEP_CATEGORY, KEEP_GLOBAL, WINDOW_MS,
};
use crate::features::store::StoreError;
use redis::Value;
use std::collections::HashMap;
use std::sync::LazyLock;

pub(super) const POP_WRITE_LUA: &str = include_str!("pop_write.lua");
pub(super) const POP_READ_LUA: &str = include_str!("pop_read.lua");
static POP_WRITE_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(POP_WRITE_LUA).get_hash().to_string());
static POP_READ_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(POP_READ_LUA).get_hash().to_string());

/// Most filings in one `pop_write.lua` call. A script holds Redis while it
/// runs (~12 µs a filing, benches/RESULTS.md), so a large batch's filings
/// go in several calls, between which Redis serves the reads: a
/// `kafka.batch_size` of 5,000 blocks it ~6 ms at a time, not ~60.
const POP_WRITE_CHUNK: usize = 500;

/// Items to read back after a write: id and the buckets to file.
pub(super) type PopReads = Vec<(String, Vec<i64>)>;

impl RedisStore {
    /// The base of the popularity keys (their one hash tag).
    pub(super) fn pop_base(&self) -> String {
        format!("{{{}:pop}}", self.settings.key_prefix)
    }

    /// Adds one `HMGET` per item the stream's `plans` add to a live bucket
    /// of (at `now`; each item once, in order of first appearance,
    /// duplicates included): its category and its counts in those buckets.
    pub(super) fn push_event_pop_reads(
        &self,
        pipe: &mut redis::Pipeline,
        plans: &[Plan],
        now: i64,
    ) -> PopReads {
        let Some(spec) = &self.popularity else {
            return Vec::new();
        };
        let mut reads: PopReads = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for p in plans {
            let Some(item) = &p.item_id else { continue };
            let k = *at.entry(item).or_insert_with(|| {
                reads.push((item.clone(), Vec::new()));
                reads.len() - 1
            });
            spec.touched(&p.item, now, &mut reads[k].1);
        }
        // a write adding to no live bucket files nothing (a category it
        // changed is picked up by the item's next filing)
        reads.retain(|(_, buckets)| !buckets.is_empty());
        for (item, buckets) in &reads {
            self.push_pop_read(pipe, spec, item, buckets);
        }
        reads
    }

    /// Adds one `HMGET` per item of `ids` reading all its live buckets at `now`.
    pub(super) fn push_group_pop_reads(
        &self,
        pipe: &mut redis::Pipeline,
        ids: &[&str],
        now: i64,
    ) -> PopReads {
        let Some(spec) = &self.popularity else {
            return Vec::new();
        };
        let live: Vec<i64> = spec.live(now).collect();
        let reads: PopReads = ids
            .iter()
            .map(|id| (id.to_string(), live.clone()))
            .collect();
        for (item, buckets) in &reads {
            self.push_pop_read(pipe, spec, item, buckets);
        }
        reads
    }

    fn push_pop_read(
        &self,
        pipe: &mut redis::Pipeline,
        spec: &PopularitySpec,
        item: &str,
        buckets: &[i64],
    ) {
        let cmd = pipe.cmd("HMGET").arg(self.item_key(item));
        if let Some(c) = &spec.category {
            cmd.arg(c).arg(format!("{c}|t"));
        }
        for b in buckets {
            for (f, _) in &spec.features {
                cmd.arg(format!("{f}|{b}"));
            }
        }
    }

    /// The filings the `HMGET` replies of `reads` give.
    pub(super) fn filings_of(
        &self,
        reads: &PopReads,
        replies: Vec<Value>,
    ) -> Result<Vec<Filing>, StoreError> {
        let Some(spec) = &self.popularity else {
            return Ok(Vec::new());
        };
        if replies.len() != reads.len() {
            return Err(protocol("popularity: reply count differs from item count"));
        }
        reads
            .iter()
            .zip(replies)
            .map(|((item, buckets), reply)| filing(spec, item, buckets, reply))
            .collect()
    }

    /// Files `filings` written at `now` (one `pop_write.lua` call, run
    /// again if Redis lost its scripts: a filing repeated changes nothing;
    /// errors as `settle_filing`).
    pub(super) async fn file_filings(
        &self,
        filings: &[Filing],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        self.push_pop_write(&mut pipe, filings, now);
        if pipe.is_empty() {
            return Ok(());
        }
        super::settle_filing(self.run_pipeline(&pipe, Lane::Background).await)
    }

    /// Adds the `pop_write.lua` calls filing `filings` at `now` to `pipe`,
    /// if any of them has totals: [`POP_WRITE_CHUNK`] filings a call.
    pub(super) fn push_pop_write(&self, pipe: &mut redis::Pipeline, filings: &[Filing], now: i64) {
        let Some(spec) = &self.popularity else {
            return;
        };
        // (as the memory store: a filing without totals files nothing)
        let filings: Vec<&Filing> = filings.iter().filter(|f| !f.totals.is_empty()).collect();
        if filings.is_empty() {
            return;
        }
        for part in filings.chunks(POP_WRITE_CHUNK) {
            let inv = pipe
                .cmd("EVALSHA")
                .arg(&*POP_WRITE_SHA)
                .arg(1)
                .arg(self.pop_base())
                .arg(spec.cut(now))
                .arg(KEEP_GLOBAL)
                .arg(KEEP_CATEGORY)
                .arg(WINDOW_MS + spec.bucket_ms)
                .arg(BUCKETS_PER_WINDOW);
            for f in part {
                let (cat, ts) = f.category.clone().unwrap_or_default();
                inv.arg(&f.item).arg(cat).arg(ts).arg(f.totals.len());
                for (b, s) in &f.totals {
                    inv.arg(*b).arg(super::encode::fmt_f64(*s));
                }
            }
            pipe.ignore();
        }
    }

    /// The filing of a group written whole from `st` (a new group's final
    /// state: no need to read it back).
    pub(super) fn filing_of_state(
        &self,
        id: &str,
        st: &crate::features::aggregate::EntityState,
        now: i64,
    ) -> Option<Filing> {
        let spec = self.popularity.as_ref()?;
        let live: Vec<i64> = spec.live(now).collect();
        Some(spec.filing(id, st, &live))
    }

    /// The lists at `now`: the live buckets' categories and the global
    /// list, then every category's list (two pipelines).
    pub(super) async fn read_popular(
        &self,
        now: i64,
        top: usize,
        top_per_category: usize,
    ) -> Result<PopularLists, StoreError> {
        let Some(spec) = &self.popularity else {
            return Ok(PopularLists::default());
        };
        let live = spec.live(now);
        let base = self.pop_base();
        let mut pipe = redis::pipe();
        let sets: Vec<String> = live.clone().map(|b| format!("{base}:k:{b}")).collect();
        pipe.cmd("SUNION").arg(&sets);
        self.push_list_read(&mut pipe, &live, top.min(KEEP_GLOBAL), "");
        let mut replies = self
            .run_pipeline(&pipe, Lane::Background)
            .await?
            .into_iter();
        let (Some(cats), Some(global)) = (replies.next(), replies.next()) else {
            return Err(protocol("popularity: missing list reply"));
        };
        let cats: Vec<String> = array(cats)?
            .into_iter()
            .map(string)
            .collect::<Result<_, _>>()?;
        let mut by_category = HashMap::with_capacity(cats.len());
        if !cats.is_empty() {
            let mut pipe = redis::pipe();
            for c in &cats {
                self.push_list_read(&mut pipe, &live, top_per_category.min(KEEP_CATEGORY), c);
            }
            let replies = self.run_pipeline(&pipe, Lane::Background).await?;
            if replies.len() != cats.len() {
                return Err(protocol("popularity: reply count differs from categories"));
            }
            for (c, list) in cats.into_iter().zip(replies) {
                let list = scored(list)?;
                if !list.is_empty() {
                    by_category.insert(c, rank(list, top_per_category));
                }
            }
        }
        Ok(PopularLists {
            global: rank(scored(global)?, top),
            by_category,
        })
    }

    /// Adds the `pop_read.lua` call listing `category` ('': the global list).
    fn push_list_read(
        &self,
        pipe: &mut redis::Pipeline,
        live: &std::ops::RangeInclusive<i64>,
        top: usize,
        category: &str,
    ) {
        pipe.cmd("EVALSHA")
            .arg(&*POP_READ_SHA)
            .arg(1)
            .arg(self.pop_base())
            .arg(*live.start())
            .arg(*live.end())
            .arg(top)
            .arg(category);
    }
}

/// A flat `(member, score)` reply.
fn scored(v: Value) -> Result<Vec<(String, f64)>, StoreError> {
    let flat = array(v)?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(m), Some(s)) = (it.next(), it.next()) {
        let s = string(s)?;
        let s = s
            .parse::<f64>()
            .map_err(|_| protocol("popularity: a score that is not a number"))?;
        out.push((string(m)?, s));
    }
    Ok(out)
}

/// The filing of `item` from its `HMGET` reply (`push_pop_read`'s fields).
fn filing(
    spec: &PopularitySpec,
    item: &str,
    buckets: &[i64],
    reply: Value,
) -> Result<Filing, StoreError> {
    let mut it = array(reply)?.into_iter();
    let mut text = || -> Result<Option<String>, StoreError> {
        match it.next() {
            None => Err(protocol("popularity: HMGET reply cut short")),
            Some(Value::Nil) => Ok(None),
            Some(v) => string(v).map(Some),
        }
    };
    let category = match &spec.category {
        None => None,
        Some(_) => {
            let value = text()?;
            let ts = text()?.and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
            value.filter(|v| !v.is_empty()).map(|v| (v, ts))
        }
    };
    let mut totals = Vec::with_capacity(buckets.len());
    for b in buckets {
        let mut amounts = Vec::with_capacity(spec.features.len());
        for _ in &spec.features {
            amounts.push(text()?.and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0));
        }
        let s = spec.total(amounts.into_iter());
        if s > 0.0 {
            totals.push((*b, s));
        }
    }
    Ok(Filing {
        item: item.to_string(),
        category,
        totals,
    })
}
