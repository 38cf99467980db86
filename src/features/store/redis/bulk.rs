//! The backfill's bulk write ([`FeatureStore::apply_groups`]): the merged
//! updates of many events per entity group, in one script call per group.
//!
//! A group with no keys yet (the usual case of a first load) gets its final
//! state (`restore.lua`: one `RESTORE` per key of a payload built by
//! [`dump`], [`RestoreWrite`]); the restores themselves refuse a key that
//! exists, and the script then deletes what it restored, so a group is
//! written whole or not at all. The groups refused, the static rows, and
//! every group on a server that does not take the payloads (Redis < 7.0,
//! probed once) go through `update.lua` with all their event ids
//! ([`GroupCall`]): dedupe, then merge with what is there.
//!
//! Then the items written with events are filed for popularity (`popular`,
//! every live bucket): a restored group from the state it was given, the
//! others read back by an `HMGET` after their call, in the same pipeline.
//!
//! [`FeatureStore::apply_groups`]: crate::features::store::FeatureStore::apply_groups

use super::decode::{protocol, strings};
use super::encode::{fmt_f64, GroupCall};
use super::keys::{blob_key, session_key};
use super::{Lane, RedisStore};
use crate::features::aggregate::{apply_update, EntityState, Update};
use crate::features::store::popularity::Filing;
use crate::features::store::{dump, Group, GroupOutcome, GroupWrite, StoreError};
use redis::Value;

impl RedisStore {
    /// Writes merged groups: by `restore.lua` where the group is new, by
    /// `update.lua` otherwise (see the module doc).
    pub(super) async fn write_groups(
        &self,
        groups: &[GroupWrite],
        now: i64,
    ) -> Result<GroupOutcome, StoreError> {
        if groups.is_empty() {
            return Ok(GroupOutcome::default());
        }
        // groups never written before: their final state in a few commands
        let mut out = GroupOutcome::default();
        let (restores, restore_keys, mut restore_filings) = match self.restore_supported().await? {
            Some(limits) => self.restore_pipeline(groups, limits, now),
            None => (redis::pipe(), vec![None; groups.len()], Vec::new()),
        };
        let mut rest: Vec<usize> = Vec::new();
        let mut replies = if restore_keys.iter().any(Option::is_some) {
            self.run_pipeline(&restores, Lane::Background)
                .await?
                .into_iter()
        } else {
            Vec::new().into_iter()
        };
        // what the groups written file for popularity (`popular`)
        let mut filings: Vec<Filing> = Vec::new();
        for (i, k) in restore_keys.iter().enumerate() {
            match k {
                None => rest.push(i),
                Some(k) => match replies.next() {
                    Some(Value::Int(1)) => {
                        out.applied += 1;
                        out.keys += k;
                        filings.extend(restore_filings.get_mut(i).and_then(Option::take));
                    }
                    Some(_) => rest.push(i),
                    None => return Err(protocol("apply_groups: missing restore reply")),
                },
            }
        }
        if rest.is_empty() {
            self.file_filings(&filings, now).await?;
            return Ok(out);
        }
        // the others: merged updates through update.lua (dedupe, then merge
        // with what is there), each item read back after its call
        let others: Vec<GroupWrite> = rest.iter().map(|&i| groups[i].clone()).collect();
        let (mut pipe, keys) = self.group_pipeline(&others, now);
        let read_of: Vec<usize> = (0..others.len())
            .filter(|&j| filed_item(&others[j]).is_some())
            .collect();
        let ids: Vec<&str> = read_of
            .iter()
            .filter_map(|&j| filed_item(&others[j]))
            .collect();
        let reads = self.push_group_pop_reads(&mut pipe, &ids, now);
        let mut replies = self.run_pipeline(&pipe, Lane::Background).await?;
        if replies.len() != others.len() + reads.len() {
            return Err(protocol(
                "apply_groups: reply count differs from group count",
            ));
        }
        let pop = replies.split_off(others.len());
        let mut applied = vec![false; others.len()];
        for (j, r) in replies.into_iter().enumerate() {
            match r {
                Value::Int(1) => {
                    out.applied += 1;
                    out.keys += keys[j];
                    applied[j] = true;
                }
                other => out.conflicts.push((rest[j], strings(other)?)),
            }
        }
        // only the groups written (a refused one is retried, and filed then)
        let (reads, pop): (Vec<_>, Vec<_>) = reads
            .into_iter()
            .zip(pop)
            .zip(read_of.iter().map(|&j| applied[j]))
            .filter(|(_, a)| *a)
            .map(|(rp, _)| rp)
            .unzip();
        filings.extend(self.filings_of(&reads, pop)?);
        self.file_filings(&filings, now).await?;
        Ok(out)
    }

    /// Whether `restore.lua` can be used: Redis takes our `RESTORE` payloads
    /// (listpack encodings, RDB 10: Redis ≥ 7.0), and if so the server's
    /// listpack limits ([`RedisStore::listpack_limits`]). Asked once, with a
    /// probe key that expires in a second; older servers get `update.lua`
    /// for every group (slower, same result): `None`.
    pub(super) async fn restore_supported(&self) -> Result<Option<dump::Limits>, StoreError> {
        self.restore_limits
            .get_or_try_init(|| async {
                let key = format!("{}:probe:restore", self.settings.key_prefix);
                let mut conn = self.background.clone();
                let reply: Result<(), redis::RedisError> = redis::cmd("RESTORE")
                    .arg(&key)
                    .arg(1000)
                    .arg(dump::hash(&[("probe", "1")], &dump::Limits::default()))
                    .arg("REPLACE")
                    .query_async(&mut conn)
                    .await;
                match reply {
                    Ok(()) => {
                        let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
                        Ok(Some(self.listpack_limits().await))
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                        ) =>
                    {
                        tracing::warn!(error = %e, "redis does not take RESTORE payloads (needs Redis >= 7.0); backfill writes take the slower update.lua path");
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await
            .copied()
    }

    /// The server's `hash-max-listpack-*` / `zset-max-listpack-*` settings
    /// (`CONFIG GET`), so backfill payloads are listpacks exactly where
    /// Redis keeps listpacks; Redis' defaults where `CONFIG` is refused
    /// (some managed services rename it). Raising
    /// `zset-max-listpack-entries` speeds up a first backfill of busy items
    /// (feature-store/README.md).
    pub async fn listpack_limits(&self) -> dump::Limits {
        let mut conn = self.background.clone();
        let reply: Result<Vec<(String, String)>, redis::RedisError> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("*-max-listpack-*")
            .query_async(&mut conn)
            .await;
        let mut limits = dump::Limits::default();
        match reply {
            Ok(settings) => {
                for (name, value) in settings {
                    let Ok(v) = value.parse::<usize>() else {
                        continue;
                    };
                    match name.as_str() {
                        "hash-max-listpack-entries" => limits.hash_entries = v,
                        "hash-max-listpack-value" => limits.hash_value = v,
                        "zset-max-listpack-entries" => limits.zset_entries = v,
                        "zset-max-listpack-value" => limits.zset_value = v,
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "CONFIG GET refused; assuming Redis' default listpack limits");
            }
        }
        limits
    }

    /// The pipeline writing the groups by `update.lua`, and the number of
    /// keys each group's call writes.
    fn group_pipeline(&self, groups: &[GroupWrite], now: i64) -> (redis::Pipeline, Vec<usize>) {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(groups.len());
        for g in groups {
            let (base, item) = match &g.group {
                Group::Customer(id) => (self.customer_key(id), None),
                Group::Item(id) => (self.item_key(id), Some(id)),
            };
            let mut call = GroupCall::new(format!("{base}:seen"));
            call.push(&base, &g.updates, now);
            if item.is_some() && !g.updates.is_empty() {
                call.blob(&base);
            }
            for (sid, updates) in &g.sessions {
                call.push(&session_key(&base, sid), updates, now);
            }
            // the dedupe set is written only when there are events
            keys.push(call.keys.len() - usize::from(g.events.is_empty()));
            let ids = g.events.iter();
            call.invoke(&mut pipe, &self.update_sha, ids, &self.settings, now);
            if let Some(item) = item {
                pipe.cmd("SADD").arg(self.items_index()).arg(item).ignore();
            }
        }
        (pipe, keys)
    }

    /// The pipeline writing the groups as their final state (`restore.lua`),
    /// and the keys each writes. Static rows (no events) are not eligible:
    /// `None`.
    fn restore_pipeline(
        &self,
        groups: &[GroupWrite],
        limits: dump::Limits,
        now: i64,
    ) -> (redis::Pipeline, Vec<Option<usize>>, Vec<Option<Filing>>) {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(groups.len());
        let mut filings = Vec::with_capacity(groups.len());
        for g in groups {
            if g.events.is_empty() {
                keys.push(None);
                filings.push(None);
                continue;
            }
            let (base, item) = match &g.group {
                Group::Customer(id) => (self.customer_key(id), None),
                Group::Item(id) => (self.item_key(id), Some(id)),
            };
            let cutoff = g.events.dedupe_cutoff(self.settings.dedupe_window_ms, now);
            let mut ids: Vec<(&str, i64)> = g.events.iter().filter(|(_, t)| *t >= cutoff).collect();
            let mut w = RestoreWrite::new(format!("{base}:seen"), &mut ids, limits);
            let st = state_of(&g.updates, now);
            w.state(&base, &st, item.is_some());
            filings.push(item.and_then(|id| self.filing_of_state(id, &st, now)));
            for (sid, updates) in &g.sessions {
                if !updates.is_empty() {
                    w.state(&session_key(&base, sid), &state_of(updates, now), false);
                }
            }
            keys.push(Some(w.keys.len()));
            pipe.cmd("EVALSHA")
                .arg(&self.restore_sha)
                .arg(w.keys.len())
                .arg(&w.keys)
                .arg(self.settings.ttl_seconds.saturating_mul(1000))
                .arg(&w.payloads);
            if let Some(item) = item {
                pipe.cmd("SADD").arg(self.items_index()).arg(item).ignore();
            }
        }
        (pipe, keys, filings)
    }
}

/// The item a group write files for popularity: an item group with
/// events (static writes change no count or `last` category).
fn filed_item(g: &GroupWrite) -> Option<&str> {
    match &g.group {
        Group::Item(id) if !g.events.is_empty() => Some(id),
        _ => None,
    }
}

/// The state merged updates leave on an empty entity at `now` (the
/// reference semantics, `aggregate::apply_update`).
fn state_of(updates: &[Update], now: i64) -> EntityState {
    let mut st = EntityState::default();
    updates.iter().for_each(|u| apply_update(&mut st, u, now));
    st
}

/// Builds one `EVALSHA restore` call: an entity state in the key layout
/// (`keys`), as `update.lua` would have left it on empty keys, one
/// `RESTORE` payload per key (`dump`).
struct RestoreWrite {
    keys: Vec<String>,
    payloads: Vec<Vec<u8>>,
    limits: dump::Limits,
}

impl RestoreWrite {
    /// Starts with the dedupe set: `ids` as (event id, ts).
    fn new(seen: String, ids: &mut [(&str, i64)], limits: dump::Limits) -> Self {
        RestoreWrite {
            keys: vec![seen],
            payloads: vec![dump::zset(ids, &limits)],
            limits,
        }
    }

    fn hash(&mut self, key: String, fields: &[(String, String)]) {
        if !fields.is_empty() {
            self.keys.push(key);
            self.payloads.push(dump::hash(fields, &self.limits));
        }
    }

    /// The keys of `st` under `base`; with `blob`, also the hash's blob
    /// (`keys::blob_key`: an item).
    fn state(&mut self, base: &str, st: &EntityState, blob: bool) {
        let mut fields = Vec::new();
        for (f, x) in &st.nums {
            fields.push((f.clone(), fmt_f64(*x)));
        }
        for (f, w) in &st.windows {
            fields.push((format!("{f}|lo"), w.lo.to_string()));
            for (b, x) in &w.buckets {
                fields.push((format!("{f}|{b}"), fmt_f64(*x)));
            }
        }
        for (f, l) in &st.lasts {
            fields.push((f.clone(), l.value.clone()));
            if l.ts != 0 || l.seq != 0 {
                fields.push((format!("{f}|t"), l.ts.to_string()));
                fields.push((format!("{f}|q"), l.seq.to_string()));
            }
        }
        if blob && !fields.is_empty() {
            self.keys.push(blob_key(base));
            self.payloads.push(dump::string(&pack_pairs(&fields)));
        }
        self.hash(base.to_string(), &fields);
        for (f, list) in &st.recent {
            if list.is_empty() {
                continue;
            }
            let mut members: Vec<(&str, i64)> =
                list.iter().map(|(m, t)| (m.as_str(), *t)).collect();
            self.keys.push(format!("{base}:r:{f}"));
            self.payloads.push(dump::zset(&mut members, &self.limits));
        }
        for (f, r) in &st.resettable {
            let mut fields: Vec<(String, String)> = r
                .parts
                .iter()
                .map(|(t, x)| (t.to_string(), fmt_f64(*x)))
                .collect();
            if r.reset_ts > 0 {
                fields.push(("rts".into(), r.reset_ts.to_string()));
            }
            self.hash(format!("{base}:x:{f}"), &fields);
        }
    }
}

/// An item blob (`keys::blob_key`): the hash's `fields` as one msgpack
/// array of field, value, field, value…, as `update.lua`'s `B` op packs
/// an `HGETALL` (`decode::blob_pairs` reads both).
fn pack_pairs(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + fields.len() * 24);
    // writing to a Vec cannot fail
    rmp::encode::write_array_len(&mut out, (fields.len() * 2) as u32).expect("write to a Vec");
    for (f, v) in fields {
        rmp::encode::write_str(&mut out, f).expect("write to a Vec");
        rmp::encode::write_str(&mut out, v).expect("write to a Vec");
    }
    out
}
