//! Which events a backfill loads ([`select`]): those up to `as_of`, each
//! event id once (its first occurrence in the input), like the stream's
//! dedupe. Sharded by id hash over the cores.

use crate::event::Event;
use rustc_hash::FxBuildHasher;
use std::collections::HashSet;
use std::hash::BuildHasher;

/// Indices of the events to load: `ts <= as_of`, first occurrence of each id.
/// Returns them with the counts of events dropped for each reason. On
/// `threads` threads, each owning a hash shard of the ids (so each holds a
/// smaller set, and their new memory is faulted in side by side).
pub fn select(events: &[Event], as_of: i64, threads: usize) -> (Vec<u32>, usize, usize) {
    let shards = if events.len() < 4096 {
        1
    } else {
        threads.max(1)
    };
    let shard = |k: usize| {
        let mut seen: HashSet<&str, FxBuildHasher> =
            HashSet::with_capacity_and_hasher(events.len() / shards + 1024, FxBuildHasher);
        let (mut late, mut dups) = (0, 0);
        let mut keep = Vec::with_capacity(events.len() / shards + 1024);
        for (i, e) in events.iter().enumerate() {
            let id = e.event_id.as_str();
            if shards > 1 && FxBuildHasher.hash_one(id) % shards as u64 != k as u64 {
                continue;
            }
            if e.ts > as_of {
                late += 1;
            } else if !seen.insert(id) {
                dups += 1;
            } else {
                keep.push(i as u32);
            }
        }
        (keep, late, dups)
    };
    let parts: Vec<(Vec<u32>, usize, usize)> = if shards == 1 {
        vec![shard(0)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..shards).map(|k| s.spawn(move || shard(k))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let (late, dups) = parts.iter().fold((0, 0), |(l, d), p| (l + p.1, d + p.2));
    if parts.len() == 1 {
        let keep = parts.into_iter().next().map(|p| p.0).unwrap_or_default();
        return (keep, late, dups);
    }
    // back into input order (the shards' indices are disjoint)
    let mut kept = vec![false; events.len()];
    for p in &parts {
        p.0.iter().for_each(|&i| kept[i as usize] = true);
    }
    let keep = (0..events.len() as u32)
        .filter(|&i| kept[i as usize])
        .collect();
    (keep, late, dups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn event(id: String, ts: i64) -> Event {
        Event {
            event_id: id,
            kind: EventType::PageView,
            customer_id: "c".into(),
            ts,
            session_id: None,
            item_id: None,
            seq: None,
            props: Default::default(),
        }
    }

    /// Sharded by id hash on several threads, `select` still keeps the first
    /// occurrence of each id, in input order, and counts the same drops.
    #[test]
    fn select_on_shards_keeps_the_first_of_each_id_in_input_order() {
        let events: Vec<Event> = (0..20_000u64)
            .map(|i| event(format!("e{}", (i * 7919) % 12_000), (i % 100) as i64))
            .collect();
        let as_of = 90;
        let mut seen = HashSet::new();
        let (mut late, mut dups, mut keep) = (0, 0, Vec::new());
        for (i, e) in events.iter().enumerate() {
            if e.ts > as_of {
                late += 1;
            } else if !seen.insert(e.event_id.as_str()) {
                dups += 1;
            } else {
                keep.push(i as u32);
            }
        }
        assert!(late > 0 && dups > 0);
        for threads in [1, 2, 3] {
            assert_eq!(
                select(&events, as_of, threads),
                (keep.clone(), late, dups),
                "{threads} threads"
            );
        }
    }
}
