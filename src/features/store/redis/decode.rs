//! What the store gets back: Redis replies decoded into [`EntityState`]s
//! (the hash fields, sorted sets and resettable hashes of the key layout,
//! `keys`) and into the outcome of the stream's writes. Fields of features
//! no longer defined are ignored; a reply of the wrong shape is a
//! [`StoreError::Protocol`].

use super::keys::Layout;
use super::RedisStore;
use crate::features::aggregate::{EntityState, LastValue, Plan, Resettable, Windowed};
use crate::features::definition::{Aggregation, Entity};
use crate::features::store::{ApplyOutcome, ReadResult, StoreError};
use redis::Value;

impl RedisStore {
    /// Decodes the replies of a read (`read.lua`, then `push_item_reads`
    /// for `n_items` items).
    pub(super) fn parse_read(
        &self,
        replies: Vec<Value>,
        n_items: usize,
    ) -> Result<ReadResult, StoreError> {
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
        let items = self.parse_items(&mut it, n_items)?;
        Ok(ReadResult {
            customer,
            session_id,
            session,
            items,
        })
    }

    /// `n` items' states from the replies of `push_item_reads`.
    pub(super) fn parse_items(
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

    /// One entity's state from its hash, its recent lists (`zsets`) and its
    /// resettable sums (`xs`), the latter two in `layout` order.
    pub(super) fn state_from(
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
                (_, Some("lo")) => {
                    st.windows
                        .entry(base.to_string())
                        .or_insert_with(Windowed::default)
                        .lo = num() as i64;
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

    /// One entity's state from `read.lua`'s `{hash, {zsets}, {sums}}`.
    pub(super) fn parse_group(
        &self,
        v: Value,
        entity: Entity,
        c: &Layout,
    ) -> Result<EntityState, StoreError> {
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

/// What the replies of an [`RedisStore::event_pipeline`] say: per plan,
/// whether its customer and item calls applied it.
pub(super) fn event_outcome(
    plans: &[Plan],
    shape: Vec<(bool, bool)>,
    replies: Vec<Value>,
) -> (ApplyOutcome, Vec<Option<Value>>) {
    let mut it = replies.into_iter();
    let mut out = ApplyOutcome::default();
    let mut lists = Vec::with_capacity(plans.len());
    for (p, (list_read, has_item)) in plans.iter().zip(shape) {
        let list = if list_read { it.next() } else { None };
        let c = matches!(it.next(), Some(Value::Int(1)));
        // only a new event co-visits
        lists.push(list.filter(|_| c));
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
    (out, lists)
}

pub(super) fn protocol(msg: &str) -> StoreError {
    StoreError::Protocol(msg.to_string())
}

pub(super) fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        Value::Map(m) => Ok(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(StoreError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

pub(super) fn string(v: Value) -> Result<String, StoreError> {
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

pub(super) fn strings(v: Value) -> Result<Vec<String>, StoreError> {
    array(v)?.into_iter().map(string).collect()
}

/// The MGET reply of `n` contact counters (nil → 0).
pub(super) fn offer_counts(v: Value, n: usize) -> Result<Vec<u64>, StoreError> {
    let counts: Vec<u64> = array(v)?
        .into_iter()
        .map(|c| match c {
            Value::Nil => Ok(0),
            other => string(other)?
                .parse::<u64>()
                .map_err(|e| protocol(&format!("offer count: {e}"))),
        })
        .collect::<Result<_, _>>()?;
    if counts.len() != n {
        return Err(protocol("offer counts reply has the wrong length"));
    }
    Ok(counts)
}
