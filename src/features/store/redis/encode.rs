//! What the store sends: [`Update`]s turned into the ops of `update.lua`
//! ([`GroupCall`]), the pipeline of one call per event and entity group
//! (the stream's writes), and the arguments of the reads (`read.lua` and
//! the item keys). Numbers are printed as Rust prints them ([`fmt_f64`]),
//! the shortest form that parses back to the same value.

use super::keys::{blob_key, session_key, Layout};
use super::{RedisSettings, RedisStore};
use crate::features::aggregate::{Plan, Update};
use crate::features::definition::BUCKETS_PER_WINDOW;
use crate::features::store::timers::TimerOp;

impl RedisStore {
    /// The pipeline applying each event's plan: one `update.lua` call per
    /// entity group it changes (the customer's list read before it when the
    /// event co-visits), and per plan whether it has that read and an item
    /// call.
    pub(super) fn event_pipeline(
        &self,
        plans: &[Plan],
        now: i64,
    ) -> (redis::Pipeline, Vec<(bool, bool)>) {
        let mut pipe = redis::pipe();
        let mut shape = Vec::with_capacity(plans.len());
        for p in plans {
            let cbase = self.customer_key(&p.customer_id);
            // the timers' index entries first (`store::timers`)
            self.push_timer_hints(&mut pipe, &p.customer_id, &p.timers);
            // the customer's list as this event finds it (`covisit`)
            let list_read = self.push_previous_read(&mut pipe, p);
            let mut call = GroupCall::new(format!("{cbase}:seen"));
            call.push(&cbase, &p.customer, now);
            if let Some(sid) = &p.session_id {
                call.push(&session_key(&cbase, sid), &p.session, now);
            }
            if !p.timers.is_empty() {
                call.push_timers(
                    &self.timer_records_key(&p.customer_id),
                    &p.timers,
                    &p.event_id,
                    p.ts,
                );
            }
            let ids = std::iter::once((p.event_id.as_str(), p.ts));
            call.invoke(&mut pipe, &self.update_sha, ids, &self.settings, now);
            let has_item = p.item_id.is_some();
            if let Some(item) = &p.item_id {
                let ibase = self.item_key(item);
                let mut call = GroupCall::new(format!("{ibase}:seen"));
                call.push(&ibase, &p.item, now);
                if !p.item.is_empty() {
                    call.blob(&ibase);
                }
                let ids = std::iter::once((p.event_id.as_str(), p.ts));
                call.invoke(&mut pipe, &self.update_sha, ids, &self.settings, now);
                pipe.cmd("SADD").arg(self.items_index()).arg(item).ignore();
            }
            shape.push((list_read, has_item));
        }
        (pipe, shape)
    }

    /// The arguments of `read.lua`: the session asked for, the customer
    /// feature naming the latest session, then the customer's and the
    /// session's lists of `:r:` and `:x:` features.
    pub(super) fn group_args(
        &self,
        layout_c: &Layout,
        layout_s: &Layout,
        session_id: Option<&str>,
    ) -> Vec<String> {
        let mut args = vec![
            session_id.unwrap_or("").to_string(),
            self.session_feature.clone().unwrap_or_default(),
        ];
        for l in [
            &layout_c.recent,
            &layout_c.resettable,
            &layout_s.recent,
            &layout_s.resettable,
        ] {
            args.push(l.len().to_string());
            args.extend(l.iter().cloned());
        }
        args
    }

    /// Adds the commands reading items `ids`: per item its blob (the
    /// hash's fields in one string: one `GET` costs Redis a quarter of an
    /// `HGETALL`, benches/RESULTS.md), then its recent lists and resettable
    /// sums in [`Layout`] order.
    pub(super) fn push_item_reads(&self, pipe: &mut redis::Pipeline, ids: &[String]) {
        for id in ids {
            let base = self.item_key(id);
            pipe.cmd("GET").arg(blob_key(&base));
            for f in &self.item.recent {
                pipe.cmd("ZRANGE")
                    .arg(format!("{base}:r:{f}"))
                    .arg(0)
                    .arg(-1)
                    .arg("REV")
                    .arg("WITHSCORES");
            }
            for f in &self.item.resettable {
                pipe.cmd("HGETALL").arg(format!("{base}:x:{f}"));
            }
        }
    }
}

/// Members of one recent list in one call: feature, cap, (member, ts).
type RecentBatch<'a> = (&'a str, usize, Vec<(&'a str, i64)>);

/// Buckets of one window in one call: feature, bucket width, (bucket, amount).
type WindowBatch<'a> = (&'a str, i64, Vec<(i64, f64)>);

/// Builds one `EVALSHA update` call for an entity group: its keys (the
/// dedupe set first) and the ops of `update.lua` that refer to them.
pub(super) struct GroupCall {
    pub(super) keys: Vec<String>,
    ops: Vec<String>,
}

impl GroupCall {
    pub(super) fn new(seen: String) -> Self {
        GroupCall {
            keys: vec![seen],
            ops: Vec::new(),
        }
    }

    fn key(&mut self, k: String) -> String {
        let idx = match self.keys.iter().position(|x| *x == k) {
            Some(i) => i,
            None => {
                self.keys.push(k);
                self.keys.len() - 1
            }
        };
        (idx + 1).to_string()
    }

    /// Adds the ops of `updates`, written at `now`, to the key `base` (and
    /// its `:r:`/`:x:` keys).
    pub(super) fn push(&mut self, base: &str, updates: &[Update], now: i64) {
        // Several buckets of one window, or members of one recent list (a
        // backfill's merged updates), go in one op each: fewer Redis calls.
        let mut windows: Vec<WindowBatch<'_>> = Vec::new();
        let mut recents: Vec<RecentBatch<'_>> = Vec::new();
        for u in updates {
            match u {
                Update::AddWindowed {
                    feature,
                    bucket,
                    bucket_ms,
                    amount,
                } => match windows.iter_mut().find(|(f, _, _)| f == feature) {
                    Some((_, _, b)) => b.push((*bucket, *amount)),
                    None => windows.push((feature, *bucket_ms, vec![(*bucket, *amount)])),
                },
                Update::PushRecent {
                    feature,
                    member,
                    ts,
                    cap,
                } => match recents.iter_mut().find(|(f, _, _)| f == feature) {
                    Some((_, _, m)) => m.push((member, *ts)),
                    None => recents.push((feature, *cap, vec![(member, *ts)])),
                },
                _ => {}
            }
        }
        let batched_w: Vec<&str> = windows
            .iter()
            .filter(|(_, _, b)| b.len() > 1)
            .map(|(f, _, _)| *f)
            .collect();
        let batched_r: Vec<&str> = recents
            .iter()
            .filter(|(_, _, m)| m.len() > 1)
            .map(|(f, _, _)| *f)
            .collect();
        for (feature, bucket_ms, buckets) in windows {
            if buckets.len() < 2 {
                continue; // the single-update form below
            }
            let k = self.key(base.to_string());
            self.ops.extend([
                "WB".into(),
                k,
                feature.to_string(),
                window_cut(now, bucket_ms).to_string(),
                buckets.len().to_string(),
            ]);
            for (b, a) in buckets {
                self.ops.extend([b.to_string(), fmt_f64(a)]);
            }
        }
        for (feature, cap, members) in recents {
            if members.len() < 2 {
                continue;
            }
            let k = self.key(format!("{base}:r:{feature}"));
            self.ops
                .extend(["RB".into(), k, cap.to_string(), members.len().to_string()]);
            for (m, t) in members {
                self.ops.extend([m.to_string(), t.to_string()]);
            }
        }
        for u in updates {
            match u {
                Update::AddWindowed { feature, .. } if batched_w.contains(&feature.as_str()) => {
                    continue
                }
                Update::PushRecent { feature, .. } if batched_r.contains(&feature.as_str()) => {
                    continue
                }
                _ => {}
            }
            match u {
                Update::Add { feature, amount } => {
                    let k = self.key(base.to_string());
                    self.ops
                        .extend(["A".into(), k, feature.to_string(), fmt_f64(*amount)]);
                }
                Update::AddWindowed {
                    feature,
                    bucket,
                    bucket_ms,
                    amount,
                } => {
                    let k = self.key(base.to_string());
                    self.ops.extend([
                        "W".into(),
                        k,
                        feature.to_string(),
                        bucket.to_string(),
                        fmt_f64(*amount),
                        window_cut(now, *bucket_ms).to_string(),
                    ]);
                }
                Update::SetLast {
                    feature,
                    ts,
                    seq,
                    value,
                } => {
                    let k = self.key(base.to_string());
                    self.ops.extend([
                        "L".into(),
                        k,
                        feature.to_string(),
                        ts.to_string(),
                        seq.to_string(),
                        value.clone(),
                    ]);
                }
                Update::MaxTs { feature, ts } => {
                    let k = self.key(base.to_string());
                    self.ops
                        .extend(["T".into(), k, feature.to_string(), ts.to_string()]);
                }
                Update::PushRecent {
                    feature,
                    member,
                    ts,
                    cap,
                } => {
                    let k = self.key(format!("{base}:r:{feature}"));
                    self.ops.extend([
                        "R".into(),
                        k,
                        member.clone(),
                        ts.to_string(),
                        cap.to_string(),
                    ]);
                }
                Update::AddResettable {
                    feature,
                    ts,
                    amount,
                } => {
                    let k = self.key(format!("{base}:x:{feature}"));
                    self.ops
                        .extend(["S".into(), k, ts.to_string(), fmt_f64(*amount)]);
                }
                Update::Reset { feature, ts } => {
                    let k = self.key(format!("{base}:x:{feature}"));
                    self.ops.extend(["X".into(), k, ts.to_string()]);
                }
                Update::SetStatic { feature, value } => {
                    let k = self.key(base.to_string());
                    self.ops
                        .extend(["V".into(), k, feature.to_string(), value.clone()]);
                }
            }
        }
    }

    /// Adds the op rewriting the blob of the item hash `base` from the hash
    /// (`B`): after every other op of the call, so it packs what they left.
    pub(super) fn blob(&mut self, base: &str) {
        let src = self.key(base.to_string());
        let k = self.key(blob_key(base));
        self.ops.extend(["B".into(), k, src]);
    }

    /// Adds the ops of an event's timer changes (`TS`, `TU`, `TC` on the
    /// customer's records hash `key`; the event `event_id` at `ts`).
    pub(super) fn push_timers(&mut self, key: &str, timers: &[TimerOp], event_id: &str, ts: i64) {
        for op in timers {
            let k = self.key(key.to_string());
            match op {
                TimerOp::Start { trigger, deadline } => self.ops.extend([
                    "TS".into(),
                    k,
                    trigger.clone(),
                    event_id.to_string(),
                    ts.to_string(),
                    deadline.to_string(),
                ]),
                TimerOp::Touch { trigger, deadline } => {
                    self.ops
                        .extend(["TU".into(), k, trigger.clone(), deadline.to_string()])
                }
                TimerOp::Cancel { trigger } => {
                    self.ops
                        .extend(["TC".into(), k, trigger.clone(), ts.to_string()])
                }
            }
        }
    }

    /// Adds the `EVALSHA update` call for the events `ids` (`(event id, ts)`)
    /// written at `now`.
    pub(super) fn invoke<'a>(
        self,
        pipe: &mut redis::Pipeline,
        sha: &str,
        ids: impl ExactSizeIterator<Item = (&'a str, i64)>,
        s: &RedisSettings,
        now: i64,
    ) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(sha)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(ids.len());
        for (id, ts) in ids {
            cmd.arg(id).arg(ts);
        }
        cmd.arg(s.dedupe_window_ms)
            .arg(s.ttl_seconds)
            .arg(BUCKETS_PER_WINDOW)
            .arg(now)
            .arg(&self.ops);
    }
}

/// The newest bucket of a window (of buckets `bucket_ms` wide) that a read
/// at `now` or later no longer sees: what `aggregate::apply_update` prunes.
fn window_cut(now: i64, bucket_ms: i64) -> i64 {
    now.div_euclid(bucket_ms.max(1)) - BUCKETS_PER_WINDOW
}

pub(super) fn fmt_f64(x: f64) -> String {
    // Rust prints the shortest representation that round-trips.
    format!("{x}")
}
