#!/usr/bin/env python3
"""Converts the public clickstreams of ../shared/data (or any file in the same
formats) into nextbest's event schema (JSON Lines, sorted by ts) and an item
catalog (CSV), for `nextbest evaluate`, `backfill` and `export-training`.

Formats (chosen by --format, or by the header):

- taobao  (Alibaba Tianchi "UserBehavior"):
  user_id,item_id,category_id,behavior_type,timestamp (Unix seconds)
  pv -> page_view, fav -> click (props.kind = "fav"), cart -> add_to_cart,
  buy -> purchase; props.category = category_id; no prices; sessions are
  cut at 30-minute gaps per user (session_id = "<user>-<n>").
- rees46   (REES46 "eCommerce behavior data from multi category store"):
  event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
  view -> page_view, cart -> add_to_cart, purchase -> purchase;
  props.price = price, props.category = category_code (else category_id),
  props.brand = brand; session_id = user_session.

The catalog (--items) has the columns of features.toml's item `static`
features, item_id,category,price,brand,margin,in_stock: each item's latest
values in the file; cells the source has no value for (Taobao's prices and
brands, every margin) are empty, which sets nothing; in_stock is 1.

Event ids are "<format>-<row number>" (1-based data rows), stable across runs.
Rows with a timestamp before --min-ts (Unix seconds) are dropped (the Taobao
slice's README protocol drops those before 1511539200).

Usage:
  training/convert_clickstream.py ../shared/data/taobao_userbehavior_even_users.csv \
      --out /tmp/taobao.jsonl --items /tmp/taobao_items.csv --min-ts 1511539200
"""

import argparse
import csv
import json
import sys
from datetime import datetime, timezone

SESSION_GAP_S = 30 * 60

TAOBAO_TYPES = {"pv": "page_view", "fav": "click", "cart": "add_to_cart", "buy": "purchase"}
REES46_TYPES = {"view": "page_view", "cart": "add_to_cart", "purchase": "purchase"}
TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
REES46_COLUMNS = ["event_time", "event_type", "product_id", "category_id", "category_code",
                  "brand", "price", "user_id", "user_session"]


def detect(header):
    if header[: len(TAOBAO_COLUMNS)] == TAOBAO_COLUMNS:
        return "taobao"
    if header[: len(REES46_COLUMNS)] == REES46_COLUMNS:
        return "rees46"
    return None


def fail(msg):
    print(f"convert_clickstream: {msg}", file=sys.stderr)
    sys.exit(2)


def taobao(rows, path, min_ts):
    events = []
    for n, r in rows:
        t = TAOBAO_TYPES.get(r["behavior_type"])
        if t is None:
            fail(f"{path}:{n + 1}: unknown behavior_type {r['behavior_type']!r}")
        try:
            ts = int(r["timestamp"])
        except ValueError:
            fail(f"{path}:{n + 1}: timestamp {r['timestamp']!r} is not an integer")
        if ts < min_ts:
            continue
        props = {"category": r["category_id"]}
        if r["behavior_type"] == "fav":
            props["kind"] = "fav"
        events.append({"event_id": f"taobao-{n}", "type": t, "customer_id": r["user_id"],
                       "ts": ts * 1000, "item_id": r["item_id"], "props": props})
    # sessions: 30-minute gaps per user, in time order (stable: file order within a second)
    events.sort(key=lambda e: e["ts"])
    last, count = {}, {}
    for e in events:
        c = e["customer_id"]
        if c not in last or e["ts"] - last[c] > SESSION_GAP_S * 1000:
            count[c] = count.get(c, 0) + 1
        last[c] = e["ts"]
        e["session_id"] = f"{c}-{count[c]}"
    return events


def rees46(rows, path, min_ts):
    events = []
    for n, r in rows:
        t = REES46_TYPES.get(r["event_type"])
        if t is None:
            fail(f"{path}:{n + 1}: unknown event_type {r['event_type']!r}")
        try:
            when = datetime.strptime(r["event_time"], "%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            fail(f"{path}:{n + 1}: event_time {r['event_time']!r} is not 'YYYY-MM-DD HH:MM:SS UTC'")
        ts = int(when.replace(tzinfo=timezone.utc).timestamp())
        if ts < min_ts:
            continue
        props = {"category": r["category_code"] or r["category_id"]}
        if r["price"]:
            try:
                props["price"] = float(r["price"])
            except ValueError:
                fail(f"{path}:{n + 1}: price {r['price']!r} is not a number")
        if r["brand"]:
            props["brand"] = r["brand"]
        e = {"event_id": f"rees46-{n}", "type": t, "customer_id": r["user_id"],
             "ts": ts * 1000, "item_id": r["product_id"], "props": props}
        if r["user_session"]:
            e["session_id"] = r["user_session"]
        events.append(e)
    events.sort(key=lambda e: e["ts"])
    return events


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("--format", choices=["taobao", "rees46"])
    ap.add_argument("--out", required=True, help="events, JSON Lines")
    ap.add_argument("--items", help="item catalog CSV (item_id,category,price,brand,margin,in_stock)")
    ap.add_argument("--min-ts", type=int, default=0, help="drop rows before this Unix time (s)")
    args = ap.parse_args()

    with open(args.input, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            fail(f"{args.input}: empty file")
        fmt = args.format or detect(header)
        if fmt is None:
            fail(f"{args.input}: header {header} is neither the taobao nor the rees46 format; pass --format")
        expected = TAOBAO_COLUMNS if fmt == "taobao" else REES46_COLUMNS
        missing = [c for c in expected if c not in header]
        if missing:
            fail(f"{args.input}: missing columns {missing} for format {fmt}")
        rows = ((n, dict(zip(header, r))) for n, r in enumerate(reader, start=1))
        events = (taobao if fmt == "taobao" else rees46)(rows, args.input, args.min_ts)

    with open(args.out, "w") as out:
        for e in events:
            out.write(json.dumps(e, separators=(",", ":")) + "\n")
    items = {}
    for e in events:
        p = e["props"]
        it = items.setdefault(e["item_id"], {"category": "", "price": "", "brand": ""})
        it["category"] = p.get("category", it["category"])
        it["price"] = p.get("price", it["price"])
        it["brand"] = p.get("brand", it["brand"])
    if args.items:
        with open(args.items, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "category", "price", "brand", "margin", "in_stock"])
            for i, it in items.items():
                w.writerow([i, it["category"], it["price"], it["brand"], "", 1])
    print(f"{fmt}: {len(events)} events, {len(items)} items, "
          f"{len({e['customer_id'] for e in events})} customers -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
