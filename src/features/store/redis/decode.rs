//! What the store gets back: Redis replies decoded into [`EntityState`]s
//! (the hash fields, sorted sets and resettable hashes of the key layout,
//! `keys`; an item's hash fields from its blob, one msgpack string) and
//! into the outcome of the stream's writes. Replies are read borrowed, and
//! each field's feature found by one map lookup ([`Layout`]). Fields of
//! features no longer defined are ignored; a reply of the wrong shape is a
//! [`StoreError::Protocol`].

use super::keys::{FieldKind, Layout};
use super::RedisStore;
use crate::features::aggregate::{EntityState, Plan, Resettable};
use crate::features::store::{ApplyOutcome, ReadResult, StoreError};
use redis::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

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
        let customer = Self::parse_group(
            g.next().ok_or_else(|| protocol("missing customer group"))?,
            &self.customer,
        )?;
        let session_id = match g.next() {
            Some(Value::Nil) | None => None,
            Some(v) => Some(string(v)?),
        };
        let session = match g.next() {
            Some(v) if session_id.is_some() => Self::parse_group(v, &self.session)?,
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

    /// `n` items' states from the replies of `push_item_reads`: per item
    /// its blob (`keys`: the main hash's fields packed), then its recent
    /// lists and resettable sums.
    pub(super) fn parse_items(
        &self,
        replies: &mut std::vec::IntoIter<Value>,
        n: usize,
    ) -> Result<Vec<EntityState>, StoreError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let blob = replies
                .next()
                .ok_or_else(|| protocol("missing item reply"))?;
            let mut st = EntityState::default();
            match &blob {
                Value::Nil => {}
                Value::BulkString(b) => fill_hash(&mut st, &self.item, blob_pairs(b)?),
                other => {
                    return Err(StoreError::Protocol(format!(
                        "expected an item blob, got {other:?}"
                    )))
                }
            }
            let zs = take(replies, self.item.recent.len(), "missing item zset reply")?;
            let xs = take(
                replies,
                self.item.resettable.len(),
                "missing item hash reply",
            )?;
            fill_keyed(&mut st, &self.item, zs, xs)?;
            out.push(st);
        }
        Ok(out)
    }

    /// One entity's state from `read.lua`'s `{hash, {zsets}, {sums}}`.
    pub(super) fn parse_group(v: Value, layout: &Layout) -> Result<EntityState, StoreError> {
        let mut parts = array(v)?.into_iter();
        let hash = parts.next().ok_or_else(|| protocol("group without hash"))?;
        let zs = array(
            parts
                .next()
                .ok_or_else(|| protocol("group without zsets"))?,
        )?;
        let xs = array(parts.next().ok_or_else(|| protocol("group without sums"))?)?;
        let mut st = EntityState::default();
        let flat = array(hash)?;
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        for p in flat.chunks_exact(2) {
            pairs.push((text(&p[0])?, text(&p[1])?));
        }
        fill_hash(
            &mut st,
            layout,
            pairs.iter().map(|(f, v)| (f.as_ref(), v.as_ref())),
        );
        fill_keyed(&mut st, layout, zs, xs)?;
        Ok(st)
    }
}

/// The next `n` replies.
fn take(
    replies: &mut std::vec::IntoIter<Value>,
    n: usize,
    missing: &str,
) -> Result<Vec<Value>, StoreError> {
    (0..n)
        .map(|_| replies.next().ok_or_else(|| protocol(missing)))
        .collect()
}

/// The (field, value) pairs of an item blob: a msgpack array of the main
/// hash's fields and values in turn, as `update.lua`'s `B` op packs them
/// (`cmsgpack`) and the backfill's restores write them (`bulk`).
pub(super) fn blob_pairs(b: &[u8]) -> Result<Vec<(&str, &str)>, StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError::Protocol(format!("item blob: {e}"));
    let mut rest = b;
    let n = rmp::decode::read_array_len(&mut rest).map_err(|e| bad(&e))? as usize;
    if !n.is_multiple_of(2) {
        return Err(protocol("item blob: an odd number of entries"));
    }
    let mut out = Vec::with_capacity(n / 2);
    for _ in 0..n / 2 {
        let (f, r) = rmp::decode::read_str_from_slice(rest).map_err(|e| bad(&e))?;
        let (v, r) = rmp::decode::read_str_from_slice(r).map_err(|e| bad(&e))?;
        out.push((f, v));
        rest = r;
    }
    Ok(out)
}

/// The entry of `m` at `k`, made (default) when missing; the key is copied
/// only then.
fn entry<'m, T: Default>(m: &'m mut BTreeMap<String, T>, k: &str) -> &'m mut T {
    if !m.contains_key(k) {
        m.insert(k.to_string(), T::default());
    }
    m.get_mut(k).expect("inserted above")
}

/// Adds the main hash's fields (`pairs`: field, value) to `st`: each field
/// read by the kind of its feature ([`FieldKind`]); fields of features no
/// longer defined are ignored.
fn fill_hash<'a>(
    st: &mut EntityState,
    layout: &Layout,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    for (field, value) in pairs {
        let (base, suffix) = match field.split_once('|') {
            Some((b, s)) => (b, Some(s)),
            None => (field, None),
        };
        let Some(kind) = layout.fields.get(base) else {
            continue; // a feature removed from the definitions: ignored
        };
        let num = || value.parse::<f64>().unwrap_or(0.0);
        match (kind, suffix) {
            (FieldKind::Last | FieldKind::Static, None) => {
                entry(&mut st.lasts, base).value = value.to_string();
            }
            (FieldKind::Last, Some("t")) => entry(&mut st.lasts, base).ts = num() as i64,
            (FieldKind::Last, Some("q")) => entry(&mut st.lasts, base).seq = num() as i64,
            (_, Some("lo")) => entry(&mut st.windows, base).lo = num() as i64,
            (_, Some(b)) => {
                if let Ok(b) = b.parse::<i64>() {
                    entry(&mut st.windows, base).buckets.insert(b, num());
                }
            }
            (FieldKind::Number, None) => {
                st.nums.insert(base.to_string(), num());
            }
        }
    }
}

/// Adds the features with keys of their own to `st`: the recent lists
/// (`zsets`) and resettable sums (`xs`), in `layout` order.
fn fill_keyed(
    st: &mut EntityState,
    layout: &Layout,
    zsets: Vec<Value>,
    xs: Vec<Value>,
) -> Result<(), StoreError> {
    for (name, z) in layout.recent.iter().zip(zsets) {
        let flat = array(z)?;
        if flat.is_empty() {
            continue;
        }
        let mut list = Vec::with_capacity(flat.len() / 2);
        for p in flat.chunks_exact(2) {
            let ts = text(&p[1])?.parse::<f64>().unwrap_or(0.0) as i64;
            list.push((text(&p[0])?.into_owned(), ts));
        }
        st.recent.insert(name.clone(), list);
    }
    for (name, x) in layout.resettable.iter().zip(xs) {
        let flat = array(x)?;
        if flat.is_empty() {
            continue;
        }
        let mut r = Resettable::default();
        for p in flat.chunks_exact(2) {
            let (f, v) = (text(&p[0])?, text(&p[1])?);
            let v = v.parse::<f64>().unwrap_or(0.0);
            if f == "rts" {
                r.reset_ts = v as i64;
            } else if let Ok(t) = f.parse::<i64>() {
                r.parts.insert(t, v);
            }
        }
        st.resettable.insert(name.clone(), r);
    }
    Ok(())
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

/// A reply's text, borrowed where it is valid UTF-8.
fn text(v: &Value) -> Result<Cow<'_, str>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b)),
        Value::SimpleString(s) => Ok(Cow::Borrowed(s)),
        Value::Int(i) => Ok(Cow::Owned(i.to_string())),
        Value::Double(d) => Ok(Cow::Owned(d.to_string())),
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
