//! The Redis key layout (feature-store/README.md): what each entity's keys
//! are called and which of its features have keys of their own.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:{c:<customer>}` | hash | customer counts, windows, last values |
//! | `{p}:{c:<customer>}:r:<feature>` | zset | a `distinct_recent` list |
//! | `{p}:{c:<customer>}:x:<feature>` | hash | a resettable sum |
//! | `{p}:{c:<customer>}:s:<session>` (+ `:r:`/`:x:`) | hash | session features (`:` and `%` in the session id written `%3A`, `%25`) |
//! | `{p}:{c:<customer>}:seen` | zset | event ids applied to the customer group |
//! | `{p}:{c:<customer>}:o:<action>:<period_ms>` | string | offers of an action in the current contact window (expires with it) |
//! | `{p}:{c:<customer>}:tm` | hash | trigger timer records: trigger → episode, start, deadline (`timers.rs`) |
//! | `{p}:{c:<customer>}:s:<session>:t1:<trigger>` | string | a trigger's once-per-session marker |
//! | `{{p}:timers:<k>}`, `…:gen` | zset, hash | shard `k` of the timers' deadline index, and its write counts |
//! | `{p}:{i:<item>}` (+ `:r:`/`:x:`/`:seen`) | as above | item features |
//! | `{p}:{i:<item>}:b` | string | the item hash's fields and values, one msgpack array (what reads fetch) |
//! | `{p}:{i:<item>}:cv` | zset | co-visited neighbours (`covisit.rs`) |
//! | `{p}:items` | set | the ids of items with keys (expired ones swept out, `items.rs`) |
//! | `{{p}:pop}:g:<b>`, `:c:<b>:<category>` | zset | popularity of bucket `b` (`popular.rs`, `pop_write.lua`) |
//! | `{{p}:pop}:k:<b>` | set | a bucket's categories |
//! | `{{p}:pop}:f`, `:fb` | hash, zset | item → the category it is listed under; its newest bucket |
//!
//! A customer's keys share the hash tag `{c:<customer>}` and so one cluster
//! slot, as an item's share `{i:<item>}`, and the popularity keys
//! `{<p>:pop}`: every script call touches one slot. The entity keys (the group's base) are named here; the suffixes
//! (`:seen`, `:s:`, `:r:`, `:x:`) are added to a base where the calls are
//! built (`encode`, `bulk`) and in `read.lua`. Ids never hold braces (the
//! event boundary refuses them), so the hash tag ends where the id does; the
//! session id, the one id outside a tag, is escaped ([`session_key`]) so
//! that session `a:r:f` is not session `a`'s recent list `f`.

use super::RedisStore;
use crate::features::definition::{is_resettable, Aggregation, Entity, FeatureSet};
use crate::features::store::OfferKey;
use rustc_hash::FxBuildHasher;
use std::collections::HashMap;

/// How a field of an entity's main hash is read: by the aggregation of
/// its feature (`f`, and `f|t`/`f|q` of a `last`; `f`, `f|lo`, `f|<bucket>`
/// of a count or sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FieldKind {
    Last,
    Static,
    Number,
}

/// The features of one entity as the keys hold them: the names of those
/// with keys of their own (the `:r:` and `:x:` keys), which the reads
/// list, and how each other feature's hash fields are read.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    pub(super) recent: Vec<String>,
    pub(super) resettable: Vec<String>,
    /// (Fx-hashed: looked up once per hash field read, ~15 an item.)
    pub(super) fields: HashMap<String, FieldKind, FxBuildHasher>,
}

impl Layout {
    pub(super) fn of(set: &FeatureSet, e: Entity) -> Layout {
        Layout {
            fields: set
                .of_entity(e)
                .map(|f| {
                    let kind = match f.aggregation {
                        Aggregation::Last { .. } => FieldKind::Last,
                        Aggregation::Static { .. } => FieldKind::Static,
                        _ => FieldKind::Number,
                    };
                    (f.name.clone(), kind)
                })
                .collect(),
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

/// The key of session `sid` of the customer group `base`; `:` and `%` in the
/// id escaped (as `read.lua` does).
pub(super) fn session_key(base: &str, sid: &str) -> String {
    let mut k = String::with_capacity(base.len() + sid.len() + 3);
    k.push_str(base);
    k.push_str(":s:");
    for ch in sid.chars() {
        match ch {
            '%' => k.push_str("%25"),
            ':' => k.push_str("%3A"),
            c => k.push(c),
        }
    }
    k
}

/// The key of the blob of the item group `base`: its hash's fields
/// packed, rewritten by every call that writes the hash (`update.lua`'s
/// `B` op, the backfill's restores), so a read fetches one string per item.
pub(super) fn blob_key(base: &str) -> String {
    format!("{base}:b")
}

impl RedisStore {
    pub(super) fn customer_key(&self, id: &str) -> String {
        format!("{}:{{c:{}}}", self.settings.key_prefix, id)
    }

    pub(super) fn item_key(&self, id: &str) -> String {
        format!("{}:{{i:{}}}", self.settings.key_prefix, id)
    }

    /// A contact counter of the customer (in the customer's slot).
    pub(super) fn offer_key(&self, customer: &str, k: &OfferKey) -> String {
        format!(
            "{}:{{c:{}}}:o:{}:{}",
            self.settings.key_prefix, customer, k.action, k.period_ms
        )
    }

    pub(super) fn items_index(&self) -> String {
        format!("{}:items", self.settings.key_prefix)
    }
}
