#!/usr/bin/env python3
"""Which decision targets any candidate source could list, on a converted history.

    training/reachability.py /tmp/taobao.jsonl --split-at 1512057600000

Replays the events (the JSON Lines of convert_clickstream.py) in time order and, at
every add_to_cart / purchase at or after the split, classifies the target against
everything before it:

- the customer's own item (and where it is among their distinct items, newest first),
- an item only other customers touched (and whether co-visitation could reach it: a
  simulation of the store's rule, src/features/store/covisit.rs: an event of
  page_view/click/add_to_cart pairs its item both ways with the up to 5 items before it
  in the customer's list within 24 h; read from 5..50 seeds, 20 or 50 neighbours each;
  and whether it is in one of the customer's categories, at what popularity rank),
- an item no one touched before: no source that reads the store can list it.

Standard library only; a check of the data, not part of serving.
"""
import argparse
import collections
import json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("events", help="JSON Lines history (convert_clickstream.py's output)")
    p.add_argument("--split-at", type=int, required=True, help="ms; decisions at or after it")
    a = p.parse_args()
    events = [json.loads(line) for line in open(a.events)]
    events.sort(key=lambda e: e["ts"])

    seen = set()
    history = collections.defaultdict(list)  # customer -> items, oldest first
    categories = collections.defaultdict(list)
    in_category = collections.defaultdict(collections.Counter)
    category_of = {}
    neighbours = collections.defaultdict(collections.Counter)
    recent = collections.defaultdict(list)  # customer -> [(item, ts)] newest first, distinct
    n = collections.Counter()
    own_rank, other_cat = [], []
    seeds_reach = collections.Counter()
    for e in events:
        item, c = e.get("item_id"), e["customer_id"]
        cat = (e.get("props") or {}).get("category")
        if e["ts"] >= a.split_at and e["type"] in ("add_to_cart", "purchase") and item:
            n["decisions"] += 1
            distinct = list(dict.fromkeys(reversed(history[c])))
            if item in distinct:
                n["own"] += 1
                own_rank.append(distinct.index(item) + 1)
            elif item in seen:
                n["others_only"] += 1
                listed = [m for m, _ in recent[c]]
                for s in (5, 10, 20, 50):
                    for per in (20, 50):
                        if any(item in [m for m, _ in neighbours[x].most_common(per)]
                               for x in listed[:s]):
                            seeds_reach[(s, per)] += 1
                cats = list(dict.fromkeys(reversed(categories[c])))
                tc = category_of.get(item, cat)
                if tc in cats:
                    ranked = [m for m, _ in in_category[tc].most_common()]
                    other_cat.append((ranked.index(item) + 1, len(ranked)))
            else:
                n["never_seen"] += 1
        if item and e["type"] in ("page_view", "click", "add_to_cart"):
            lst = recent[c]
            for m, _ in [(m, t) for m, t in lst if m != item and t >= e["ts"] - 86_400_000][:5]:
                neighbours[m][item] += 1
                neighbours[item][m] += 1
            lst[:] = [(item, e["ts"])] + [(m, t) for m, t in lst if m != item]
        if item:
            seen.add(item)
            history[c].append(item)
            category_of[item] = cat
            if cat:
                categories[c].append(cat)
                in_category[cat][item] += 1

    d = max(n["decisions"], 1)
    print(f"decisions: {n['decisions']}")
    for k in ("own", "others_only", "never_seen"):
        print(f"  {k:12} {n[k]:5}  {n[k] / d:.4f}")
    print("own targets within the customer's first N distinct items:",
          ", ".join(f"{b}: {sum(r <= b for r in own_rank)}" for b in (5, 10, 20, 50, 100)))
    print("others-only targets co-visitation reaches (seeds, neighbours per seed):",
          ", ".join(f"{k}: {v}" for k, v in sorted(seeds_reach.items())))
    print(f"others-only targets in one of the customer's categories: {len(other_cat)};",
          "within the category's top N by events:",
          ", ".join(f"{b}: {sum(r <= b for r, _ in other_cat)}" for b in (10, 50, 100)))


if __name__ == "__main__":
    main()
