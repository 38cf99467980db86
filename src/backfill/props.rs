//! The props the features read, resolved for the events of a backfill
//! before the fold ([`PropTable`]): one pass over each event's map in input
//! order, then a small row per event that the fold reads in group order
//! (where every map lookup would be a cache miss) and the fold's warm-up
//! loads ahead of use ([`PropRow::warm`]). Gives the same values as the
//! event's own map (`aggregate::Props`).

use crate::event::Event;
use crate::features::aggregate::{PropVal, Props, Text};
use crate::features::definition::FeatureSet;

/// The props the features read ([`FeatureSet::prop_names`]), resolved for
/// many events in one pass in input order, one small row per event.
pub struct PropTable<'s, 'e> {
    names: &'s [String],
    vals: Vec<PropVal<'e>>,
    /// Built for some events only: event index → row.
    rows: Option<rustc_hash::FxHashMap<u32, u32>>,
}

impl<'s, 'e> PropTable<'s, 'e> {
    /// Resolves the props of every event, on `threads` threads.
    pub fn build(set: &'s FeatureSet, events: &'e [Event], threads: usize) -> Self {
        let names = set.prop_names();
        let w = names.len();
        let mut vals = vec![PropVal::Missing; events.len() * w];
        if w > 0 {
            let per = events.len().div_ceil(threads.max(1)).max(1);
            std::thread::scope(|s| {
                for (evs, out) in events.chunks(per).zip(vals.chunks_mut(per * w)) {
                    s.spawn(move || {
                        for (e, row) in evs.iter().zip(out.chunks_mut(w)) {
                            resolve(names, e, row);
                        }
                    });
                }
            });
        }
        PropTable {
            names,
            vals,
            rows: None,
        }
    }

    /// Resolves the props of the events `idx` only.
    pub fn build_for(set: &'s FeatureSet, events: &'e [Event], idx: &[u32]) -> Self {
        let names = set.prop_names();
        let w = names.len();
        let mut vals = vec![PropVal::Missing; idx.len() * w];
        let mut rows = rustc_hash::FxHashMap::default();
        for (r, &i) in idx.iter().enumerate() {
            resolve(names, &events[i as usize], &mut vals[r * w..(r + 1) * w]);
            rows.insert(i, r as u32);
        }
        PropTable {
            names,
            vals,
            rows: Some(rows),
        }
    }

    /// The props of event `i` (its index in the events given to `build`);
    /// with `build_for`, `i` must be one of its `idx`.
    pub fn row(&self, i: usize) -> PropRow<'_, 'e> {
        let w = self.names.len();
        let r = match &self.rows {
            None => i,
            Some(rows) => rows.get(&(i as u32)).map_or(usize::MAX, |&r| r as usize),
        };
        PropRow {
            names: self.names,
            vals: self.vals.get(r * w..(r + 1) * w).unwrap_or_default(),
        }
    }
}

/// One pass over the event's props, each matched against the few names
/// (cheaper than one map lookup per name: most compares stop at the length).
fn resolve<'e>(names: &[String], e: &'e Event, row: &mut [PropVal<'e>]) {
    for (key, v) in &e.props {
        if let Some(k) = names.iter().position(|n| n == key) {
            row[k] = PropVal::of(Some(v));
        }
    }
}

/// The resolved props of one event (see [`PropTable`]).
pub struct PropRow<'t, 'e> {
    names: &'t [String],
    vals: &'t [PropVal<'e>],
}

impl<'e> PropRow<'_, 'e> {
    fn get(&self, name: &str) -> PropVal<'e> {
        let k = self.names.iter().position(|n| n == name);
        k.and_then(|k| self.vals.get(k).copied())
            .unwrap_or(PropVal::Missing)
    }
}

impl PropRow<'_, '_> {
    /// Loads the row and the first byte of its text values (to bring them
    /// into the cache ahead of use); the value is meaningless.
    pub fn warm(&self) -> u64 {
        self.vals.iter().fold(0, |acc, v| match v {
            PropVal::Str(s) => acc.wrapping_add(s.as_bytes().first().copied().unwrap_or(0) as u64),
            PropVal::Num(x, _) => acc.wrapping_add(x.to_bits()),
            _ => acc.wrapping_add(1),
        })
    }
}

impl<'e> Props<'e> for PropRow<'_, 'e> {
    fn num(&self, name: &str) -> Option<f64> {
        self.get(name).num()
    }

    fn text(&self, name: &str) -> Option<Text<'e>> {
        self.get(name).text()
    }
}
