//! The Redis online store. Key layout (feature-store/README.md):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:{c:<customer>}` | hash | customer counts, windows, last values |
//! | `{p}:{c:<customer>}:r:<feature>` | zset | a `distinct_recent` list |
//! | `{p}:{c:<customer>}:x:<feature>` | hash | a resettable sum |
//! | `{p}:{c:<customer>}:s:<session>` (+ `:r:`/`:x:`) | hash | session features |
//! | `{p}:{c:<customer>}:seen` | zset | event ids applied to the customer group |
//! | `{p}:{i:<item>}` (+ `:r:`/`:x:`/`:seen`) | as above | item features |
//! | `{p}:items` | set | every item id seen |
//!
//! A customer's keys share the hash tag `{c:<customer>}` and so one cluster
//! slot; each event is applied per group by one Lua script (`apply.lua`),
//! which dedupes by event id and mirrors `aggregate::apply_update`. The
//! backfill sends the merged updates of many events per call
//! ([`FeatureStore::apply_groups`]), or, for a group with no keys yet, its
//! final state (`fresh.lua`: one `RESTORE` per key of a payload built by
//! [`dump`]; the restores themselves refuse a key that exists, and the
//! script then deletes what it restored, so a group is written whole or not
//! at all).

use super::dump;
use super::{
    session_feature, ApplyOutcome, FeatureStore, Group, GroupOutcome, GroupWrite, ReadQuery,
    ReadResult, StoreError,
};
use crate::features::aggregate::{
    apply_update, EntityState, LastValue, Plan, Resettable, Update, Windowed,
};
use crate::features::definition::{
    is_resettable, Aggregation, Entity, FeatureSet, BUCKETS_PER_WINDOW,
};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Value;
use std::sync::Arc;
use std::time::Duration;

const APPLY_LUA: &str = include_str!("apply.lua");
const FRESH_LUA: &str = include_str!("fresh.lua");
const READ_LUA: &str = include_str!("read.lua");

/// Settings of the Redis store (part of the config's `[store]`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub dedupe_window_ms: i64,
    pub ttl_seconds: u64,
    pub timeout_ms: u64,
}

/// Names of the feature lists the read script needs, per entity.
#[derive(Debug, Clone, Default)]
struct Layout {
    recent: Vec<String>,
    resettable: Vec<String>,
}

impl Layout {
    fn of(set: &FeatureSet, e: Entity) -> Layout {
        Layout {
            recent: set
                .of_entity(e)
                .filter(|f| matches!(f.aggregation, Aggregation::DistinctRecent { .. }))
                .map(|f| f.name.clone())
                .collect(),
            resettable: set
                .of_entity(e)
                .filter(|f| is_resettable(f))
                .map(|f| f.name.clone())
                .collect(),
        }
    }
}

/// The Redis-backed [`FeatureStore`].
pub struct RedisStore {
    conn: ConnectionManager,
    settings: RedisSettings,
    set: Arc<FeatureSet>,
    session_feature: Option<String>,
    customer: Layout,
    session: Layout,
    item: Layout,
    apply_sha: String,
    fresh_sha: String,
    read_sha: String,
    /// Whether the server takes `dump` payloads (Redis ≥ 7.0) and up to
    /// which sizes it keeps listpacks, asked once.
    restore: tokio::sync::OnceCell<Option<dump::Limits>>,
}

impl RedisStore {
    /// Connects and loads the scripts.
    pub async fn connect(
        settings: RedisSettings,
        set: Arc<FeatureSet>,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.timeout_ms.max(100))))
            .set_response_timeout(Some(Duration::from_millis(settings.timeout_ms.max(100))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let timeout = settings.timeout_ms.max(100);
        let conn = tokio::time::timeout(
            Duration::from_millis(timeout * 3),
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| StoreError::Timeout(timeout * 3))??;
        let store = RedisStore {
            conn,
            session_feature: session_feature(&set),
            customer: Layout::of(&set, Entity::Customer),
            session: Layout::of(&set, Entity::Session),
            item: Layout::of(&set, Entity::Item),
            set,
            settings,
            apply_sha: redis::Script::new(APPLY_LUA).get_hash().to_string(),
            fresh_sha: redis::Script::new(FRESH_LUA).get_hash().to_string(),
            read_sha: redis::Script::new(READ_LUA).get_hash().to_string(),
            restore: tokio::sync::OnceCell::new(),
        };
        store.reload_scripts().await?;
        Ok(store)
    }

    async fn reload_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for src in [APPLY_LUA, FRESH_LUA, READ_LUA] {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Whether `fresh.lua` can be used: Redis takes our `RESTORE` payloads
    /// (listpack encodings, RDB 10: Redis ≥ 7.0), and if so the server's
    /// listpack limits ([`RedisStore::listpack_limits`]). Asked once, with a
    /// probe key that expires in a second; older servers get `apply.lua`
    /// for every group (slower, same result): `None`.
    async fn restore_supported(&self) -> Result<Option<dump::Limits>, StoreError> {
        self.restore
            .get_or_try_init(|| async {
                let key = format!("{}:probe:restore", self.settings.key_prefix);
                let mut conn = self.conn.clone();
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
                        tracing::warn!(error = %e, "redis does not take RESTORE payloads (needs Redis >= 7.0); backfill writes take the slower apply.lua path");
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
        let mut conn = self.conn.clone();
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

    fn customer_key(&self, id: &str) -> String {
        format!("{}:{{c:{}}}", self.settings.key_prefix, id)
    }

    fn item_key(&self, id: &str) -> String {
        format!("{}:{{i:{}}}", self.settings.key_prefix, id)
    }

    fn items_index(&self) -> String {
        format!("{}:items", self.settings.key_prefix)
    }

    fn apply_pipeline(&self, plans: &[Plan]) -> (redis::Pipeline, Vec<(bool, bool)>) {
        let mut pipe = redis::pipe();
        let mut shape = Vec::with_capacity(plans.len());
        for p in plans {
            let cbase = self.customer_key(&p.customer_id);
            let mut call = GroupCall::new(format!("{cbase}:seen"));
            call.push(&cbase, &p.customer);
            if let Some(sid) = &p.session_id {
                call.push(&format!("{cbase}:s:{sid}"), &p.session);
            }
            let ids = std::iter::once((p.event_id.as_str(), p.ts));
            call.invoke(&mut pipe, &self.apply_sha, ids, &self.settings);
            let has_item = p.item_id.is_some();
            if let Some(item) = &p.item_id {
                let ibase = self.item_key(item);
                let mut call = GroupCall::new(format!("{ibase}:seen"));
                call.push(&ibase, &p.item);
                let ids = std::iter::once((p.event_id.as_str(), p.ts));
                call.invoke(&mut pipe, &self.apply_sha, ids, &self.settings);
                pipe.cmd("SADD").arg(self.items_index()).arg(item).ignore();
            }
            shape.push((true, has_item));
        }
        (pipe, shape)
    }

    /// The pipeline for [`FeatureStore::apply_groups`] and the number of
    /// keys each group's call writes.
    fn group_pipeline(&self, groups: &[GroupWrite]) -> (redis::Pipeline, Vec<usize>) {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(groups.len());
        for g in groups {
            let (base, item) = match &g.group {
                Group::Customer(id) => (self.customer_key(id), None),
                Group::Item(id) => (self.item_key(id), Some(id)),
            };
            let mut call = GroupCall::new(format!("{base}:seen"));
            call.push(&base, &g.updates);
            for (sid, updates) in &g.sessions {
                call.push(&format!("{base}:s:{sid}"), updates);
            }
            // the dedupe set is written only when there are events
            keys.push(call.keys.len() - usize::from(g.events.is_empty()));
            let ids = g.events.iter();
            call.invoke(&mut pipe, &self.apply_sha, ids, &self.settings);
            if let Some(item) = item {
                pipe.cmd("SADD").arg(self.items_index()).arg(item).ignore();
            }
        }
        (pipe, keys)
    }

    /// The pipeline writing the groups as fresh state (`fresh.lua`), and the
    /// keys each writes. Static rows (no events) are not eligible: `None`.
    fn fresh_pipeline(
        &self,
        groups: &[GroupWrite],
        limits: dump::Limits,
    ) -> (redis::Pipeline, Vec<Option<usize>>) {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(groups.len());
        for g in groups {
            if g.events.is_empty() {
                keys.push(None);
                continue;
            }
            let (base, item) = match &g.group {
                Group::Customer(id) => (self.customer_key(id), None),
                Group::Item(id) => (self.item_key(id), Some(id)),
            };
            let cutoff = g.events.dedupe_cutoff(self.settings.dedupe_window_ms);
            let mut ids: Vec<(&str, i64)> = g.events.iter().filter(|(_, t)| *t >= cutoff).collect();
            let mut w = FreshWrite::new(format!("{base}:seen"), &mut ids, limits);
            w.state(&base, &state_of(&g.updates));
            for (sid, updates) in &g.sessions {
                if !updates.is_empty() {
                    w.state(&format!("{base}:s:{sid}"), &state_of(updates));
                }
            }
            keys.push(Some(w.keys.len()));
            pipe.cmd("EVALSHA")
                .arg(&self.fresh_sha)
                .arg(w.keys.len())
                .arg(&w.keys)
                .arg(self.settings.ttl_seconds.saturating_mul(1000))
                .arg(&w.payloads);
            if let Some(item) = item {
                pipe.cmd("SADD").arg(self.items_index()).arg(item).ignore();
            }
        }
        (pipe, keys)
    }

    async fn run_pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.conn.clone();
        let first: Result<Vec<Value>, redis::RedisError> = pipe.query_async(&mut conn).await;
        match first {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and lost its script cache: reload and retry;
                // the apply script is idempotent per event id.
                self.reload_scripts().await?;
                Ok(pipe.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    }

    fn group_args(
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

    fn push_item_reads(&self, pipe: &mut redis::Pipeline, ids: &[String]) {
        for id in ids {
            let base = self.item_key(id);
            pipe.cmd("HGETALL").arg(&base);
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

    fn parse_items(
        &self,
        replies: &mut std::vec::IntoIter<Value>,
        n: usize,
    ) -> Result<Vec<EntityState>, StoreError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let hash = replies
                .next()
                .ok_or_else(|| protocol("missing item reply"))?;
            let mut zs = Vec::new();
            for _ in &self.item.recent {
                zs.push(
                    replies
                        .next()
                        .ok_or_else(|| protocol("missing item zset reply"))?,
                );
            }
            let mut xs = Vec::new();
            for _ in &self.item.resettable {
                xs.push(
                    replies
                        .next()
                        .ok_or_else(|| protocol("missing item hash reply"))?,
                );
            }
            out.push(self.state_from(Entity::Item, &self.item, hash, zs, xs)?);
        }
        Ok(out)
    }

    fn state_from(
        &self,
        entity: Entity,
        layout: &Layout,
        hash: Value,
        zsets: Vec<Value>,
        xs: Vec<Value>,
    ) -> Result<EntityState, StoreError> {
        let mut st = EntityState::default();
        let flat = strings(hash)?;
        for pair in flat.chunks_exact(2) {
            let (field, value) = (&pair[0], &pair[1]);
            let (base, suffix) = match field.split_once('|') {
                Some((b, s)) => (b, Some(s)),
                None => (field.as_str(), None),
            };
            let Some(def) = self.set.of_entity(entity).find(|f| f.name == base) else {
                continue; // a feature removed from the definitions: ignored
            };
            let num = || value.parse::<f64>().unwrap_or(0.0);
            match (&def.aggregation, suffix) {
                (Aggregation::Last { .. } | Aggregation::Static { .. }, None) => {
                    st.lasts
                        .entry(base.to_string())
                        .or_insert_with(LastValue::default)
                        .value = value.clone();
                }
                (Aggregation::Last { .. }, Some("t")) => {
                    st.lasts
                        .entry(base.to_string())
                        .or_insert_with(LastValue::default)
                        .ts = num() as i64;
                }
                (Aggregation::Last { .. }, Some("q")) => {
                    st.lasts
                        .entry(base.to_string())
                        .or_insert_with(LastValue::default)
                        .seq = num() as i64;
                }
                (_, Some("max")) => {
                    st.windows
                        .entry(base.to_string())
                        .or_insert_with(Windowed::default)
                        .max = num() as i64;
                }
                (_, Some(b)) => {
                    if let Ok(b) = b.parse::<i64>() {
                        st.windows
                            .entry(base.to_string())
                            .or_insert_with(Windowed::default)
                            .buckets
                            .insert(b, num());
                    }
                }
                (_, None) => {
                    st.nums.insert(base.to_string(), num());
                }
            }
        }
        for (name, z) in layout.recent.iter().zip(zsets) {
            let flat = strings(z)?;
            if flat.is_empty() {
                continue;
            }
            let list = flat
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].parse::<f64>().unwrap_or(0.0) as i64))
                .collect();
            st.recent.insert(name.clone(), list);
        }
        for (name, x) in layout.resettable.iter().zip(xs) {
            let flat = strings(x)?;
            if flat.is_empty() {
                continue;
            }
            let mut r = Resettable::default();
            for p in flat.chunks_exact(2) {
                let v = p[1].parse::<f64>().unwrap_or(0.0);
                if p[0] == "rts" {
                    r.reset_ts = v as i64;
                } else if let Ok(t) = p[0].parse::<i64>() {
                    r.parts.insert(t, v);
                }
            }
            st.resettable.insert(name.clone(), r);
        }
        Ok(st)
    }

    fn parse_group(&self, v: Value, entity: Entity, c: &Layout) -> Result<EntityState, StoreError> {
        let mut parts = array(v)?.into_iter();
        let hash = parts.next().ok_or_else(|| protocol("group without hash"))?;
        let zs = array(
            parts
                .next()
                .ok_or_else(|| protocol("group without zsets"))?,
        )?;
        let xs = array(parts.next().ok_or_else(|| protocol("group without sums"))?)?;
        self.state_from(entity, c, hash, zs, xs)
    }
}

/// The state merged updates leave on an empty entity (the reference
/// semantics, `aggregate::apply_update`).
fn state_of(updates: &[Update]) -> EntityState {
    let mut st = EntityState::default();
    updates.iter().for_each(|u| apply_update(&mut st, u));
    st
}

/// Builds one `EVALSHA fresh` call: an entity state in the key layout of
/// the module doc, as `apply.lua` would have left it on empty keys, one
/// `RESTORE` payload per key (`dump`).
struct FreshWrite {
    keys: Vec<String>,
    payloads: Vec<Vec<u8>>,
    limits: dump::Limits,
}

impl FreshWrite {
    /// Starts with the dedupe set: `ids` as (event id, ts).
    fn new(seen: String, ids: &mut [(&str, i64)], limits: dump::Limits) -> Self {
        FreshWrite {
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

    fn state(&mut self, base: &str, st: &EntityState) {
        let mut fields = Vec::new();
        for (f, x) in &st.nums {
            fields.push((f.clone(), fmt_f64(*x)));
        }
        for (f, w) in &st.windows {
            fields.push((format!("{f}|max"), w.max.to_string()));
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

/// Members of one recent list in one call: feature, cap, (member, ts).
type RecentBatch<'a> = (&'a str, usize, Vec<(&'a str, i64)>);

/// Builds one `EVALSHA apply` call for an entity group.
struct GroupCall {
    keys: Vec<String>,
    ops: Vec<String>,
}

impl GroupCall {
    fn new(seen: String) -> Self {
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

    fn push(&mut self, base: &str, updates: &[Update]) {
        // Several buckets of one window, or members of one recent list (a
        // backfill's merged updates), go in one op each: fewer Redis calls.
        let mut windows: Vec<(&str, Vec<(i64, f64)>)> = Vec::new();
        let mut recents: Vec<RecentBatch<'_>> = Vec::new();
        for u in updates {
            match u {
                Update::AddWindowed {
                    feature,
                    bucket,
                    amount,
                } => match windows.iter_mut().find(|(f, _)| f == feature) {
                    Some((_, b)) => b.push((*bucket, *amount)),
                    None => windows.push((feature, vec![(*bucket, *amount)])),
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
            .filter(|(_, b)| b.len() > 1)
            .map(|(f, _)| *f)
            .collect();
        let batched_r: Vec<&str> = recents
            .iter()
            .filter(|(_, _, m)| m.len() > 1)
            .map(|(f, _, _)| *f)
            .collect();
        for (feature, buckets) in windows {
            if buckets.len() < 2 {
                continue; // the single-update form below
            }
            let k = self.key(base.to_string());
            self.ops.extend([
                "WB".into(),
                k,
                feature.to_string(),
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
                    amount,
                } => {
                    let k = self.key(base.to_string());
                    self.ops.extend([
                        "W".into(),
                        k,
                        feature.to_string(),
                        bucket.to_string(),
                        fmt_f64(*amount),
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

    /// Adds the `EVALSHA apply` call for the events `ids` (`(event id, ts)`).
    fn invoke<'a>(
        self,
        pipe: &mut redis::Pipeline,
        sha: &str,
        ids: impl ExactSizeIterator<Item = (&'a str, i64)>,
        s: &RedisSettings,
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
            .arg(&self.ops);
    }
}

fn fmt_f64(x: f64) -> String {
    // Rust prints the shortest representation that round-trips.
    format!("{x}")
}

fn protocol(msg: &str) -> StoreError {
    StoreError::Protocol(msg.to_string())
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        Value::Map(m) => Ok(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(StoreError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

fn string(v: Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        Value::Double(d) => Ok(d.to_string()),
        Value::Okay => Ok("OK".into()),
        other => Err(StoreError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn strings(v: Value) -> Result<Vec<String>, StoreError> {
    array(v)?.into_iter().map(string).collect()
}

#[async_trait]
impl FeatureStore for RedisStore {
    #[tracing::instrument(level = "debug", skip_all, fields(events = plans.len()))]
    async fn apply(&self, plans: &[Plan]) -> Result<ApplyOutcome, StoreError> {
        if plans.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let (pipe, shape) = self.apply_pipeline(plans);
        let replies = self.run_pipeline(&pipe).await?;
        let mut it = replies.into_iter();
        let mut out = ApplyOutcome::default();
        for (p, (_, has_item)) in plans.iter().zip(shape) {
            let c = matches!(it.next(), Some(Value::Int(1)));
            let i = has_item && matches!(it.next(), Some(Value::Int(1)));
            out.applied += usize::from(c) + usize::from(i);
            if c {
                out.changed_customers.push(p.customer_id.clone());
            }
            if !c && !i {
                out.duplicates += 1;
            }
            out.duplicate.push(!c && !i);
        }
        out.changed_customers.sort();
        out.changed_customers.dedup();
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(groups = groups.len()))]
    async fn apply_groups(&self, groups: &[GroupWrite]) -> Result<GroupOutcome, StoreError> {
        if groups.is_empty() {
            return Ok(GroupOutcome::default());
        }
        // groups never written before: their final state in a few commands
        let mut out = GroupOutcome::default();
        let (fresh, fresh_keys) = match self.restore_supported().await? {
            Some(limits) => self.fresh_pipeline(groups, limits),
            None => (redis::pipe(), vec![None; groups.len()]),
        };
        let mut rest: Vec<usize> = Vec::new();
        let mut replies = if fresh_keys.iter().any(Option::is_some) {
            self.run_pipeline(&fresh).await?.into_iter()
        } else {
            Vec::new().into_iter()
        };
        for (i, k) in fresh_keys.iter().enumerate() {
            match k {
                None => rest.push(i),
                Some(k) => match replies.next() {
                    Some(Value::Int(1)) => {
                        out.applied += 1;
                        out.keys += k;
                    }
                    Some(_) => rest.push(i),
                    None => return Err(protocol("apply_groups: missing fresh reply")),
                },
            }
        }
        if rest.is_empty() {
            return Ok(out);
        }
        // the others: merged updates through apply.lua (dedupe, then merge
        // with what is there)
        let others: Vec<GroupWrite> = rest.iter().map(|&i| groups[i].clone()).collect();
        let (pipe, keys) = self.group_pipeline(&others);
        let replies = self.run_pipeline(&pipe).await?;
        if replies.len() != others.len() {
            return Err(protocol(
                "apply_groups: reply count differs from group count",
            ));
        }
        for (j, r) in replies.into_iter().enumerate() {
            match r {
                Value::Int(1) => {
                    out.applied += 1;
                    out.keys += keys[j];
                }
                other => out.conflicts.push((rest[j], strings(other)?)),
            }
        }
        Ok(out)
    }

    async fn read(&self, q: &ReadQuery<'_>) -> Result<ReadResult, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(&self.read_sha)
            .arg(1)
            .arg(self.customer_key(q.customer_id))
            .arg(self.group_args(&self.customer, &self.session, q.session_id));
        self.push_item_reads(&mut pipe, q.item_ids);
        let replies = self.run_pipeline(&pipe).await?;
        let mut it = replies.into_iter();
        let group = array(
            it.next()
                .ok_or_else(|| protocol("missing customer reply"))?,
        )?;
        let mut g = group.into_iter();
        let customer = self.parse_group(
            g.next().ok_or_else(|| protocol("missing customer group"))?,
            Entity::Customer,
            &self.customer,
        )?;
        let session_id = match g.next() {
            Some(Value::Nil) | None => None,
            Some(v) => Some(string(v)?),
        };
        let session = match g.next() {
            Some(v) if session_id.is_some() => {
                self.parse_group(v, Entity::Session, &self.session)?
            }
            _ => EntityState::default(),
        };
        let items = self.parse_items(&mut it, q.item_ids.len())?;
        Ok(ReadResult {
            customer,
            session_id,
            session,
            items,
        })
    }

    async fn item_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.items_index())
            .query_async(&mut conn)
            .await?;
        Ok(ids)
    }

    async fn read_items(&self, ids: &[String]) -> Result<Vec<EntityState>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        self.push_item_reads(&mut pipe, ids);
        let replies = self.run_pipeline(&pipe).await?;
        self.parse_items(&mut replies.into_iter(), ids.len())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn describe(&self) -> String {
        redact(&self.settings.url)
    }
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}
