#!/usr/bin/env python3
"""Generate a synthetic, deterministic e-commerce event history and decision-moment labels.

Writes four files into --out-dir:

  events.jsonl  one event per line in the nextbest contract schema (DESIGN.md section 2),
                sorted by ts; `seq` increases per customer.
  labels.csv    decision moments with candidate slates:
                customer_id,item_id,ts,label,session_id,context.is_mobile,context.hour_of_day
  items.csv     the catalog: item_id,category,price,brand,margin,in_stock
  customers.csv profiles: customer_id,segment,country,lifetime_value
                (both for the `static` features; drawn from their own random
                stream, so events and labels do not depend on them)

The world:
  * items belong to one of 20 categories, with a lognormal price per category, a latent
    popularity (drives what gets viewed) and a latent appeal (drives what gets carted);
  * customers have 1-3 preferred categories, a price sensitivity, an activity level
    (sessions per day), a device preference and a buying propensity;
  * sessions start at diurnally weighted times; within a session the customer views
    category and product pages (biased to taste, popularity, the current category and
    items seen before), clicks, searches, adds to cart, sometimes removes, and at the end
    either checks out the whole cart or abandons it (a cart survives to later sessions).

A decision moment is taken at a sampled product page_view: ts = page_view ts + 1 ms, so the
view itself is already part of the features (the server sees the page_view before the
recommend call). Positives are the items the customer adds to cart or purchases in
(ts, ts + 30 min]; negatives are a mix of popular, random and recently viewed items.
Features are NOT computed here: `nextbest export-training` computes them point-in-time
from events strictly before ts.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import os
import sys
import time

import numpy as np

NOW_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z, the end of the history
DAY_MS = 86_400_000
MIN_MS = 60_000
HORIZON_MS = 30 * MIN_MS  # label window after a decision moment
WARMUP_DAYS = 2  # no decision moments before start + WARMUP_DAYS (features need history)

CATEGORIES = [
    "shoes", "shirts", "dresses", "jackets", "jeans", "bags", "watches", "jewelry",
    "electronics", "phones", "laptops", "audio", "home", "kitchen", "garden", "toys",
    "books", "beauty", "sports", "outdoor",
]

# Relative session-start intensity per UTC hour (peaks at lunch and in the evening).
HOUR_WEIGHTS = np.array([
    0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.55, 0.75, 0.85, 0.90, 0.95,
    1.00, 0.95, 0.85, 0.80, 0.80, 0.85, 0.95, 1.00, 1.00, 0.90, 0.70, 0.45,
])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True, help="directory for events.jsonl and labels.csv")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--moment-rate", type=float, default=0.12,
                   help="probability that a product page_view becomes a decision moment")
    p.add_argument("--empty-keep", type=float, default=0.2,
                   help="fraction of sampled moments without any positive that are kept")
    p.add_argument("--negatives", type=int, default=20, help="negatives per decision moment")
    a = p.parse_args(argv)
    if a.customers < 1 or a.items < 30 or a.days < WARMUP_DAYS + 1:
        p.error(f"need --customers >= 1, --items >= 30, --days >= {WARMUP_DAYS + 1}")
    if not (0 < a.moment_rate <= 1 and 0 <= a.empty_keep <= 1 and a.negatives >= 1):
        p.error("need 0 < --moment-rate <= 1, 0 <= --empty-keep <= 1, --negatives >= 1")
    return a


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Catalog:
    def __init__(self, rng: np.random.Generator, n_items: int):
        n_cat = len(CATEGORIES)
        cat_median = np.exp(rng.normal(math.log(45.0), 0.8, n_cat))  # median price per category
        cat_weight = np.exp(rng.normal(0.0, 0.5, n_cat))  # some categories are busier
        self.cat = np.concatenate([np.arange(n_cat), rng.integers(0, n_cat, n_items - n_cat)])
        rng.shuffle(self.cat)
        raw = cat_median[self.cat] * np.exp(rng.normal(0.0, 0.45, n_items))
        self.price = np.maximum(np.round(raw) - 0.01, 0.99)  # x.99 prices
        # log price relative to the category median: "expensive for its kind"
        self.price_z = np.log(self.price / cat_median[self.cat])
        self.appeal = rng.normal(0.0, 1.0, n_items)  # latent conversion quality
        self.pop = np.exp(1.1 * rng.normal(0.0, 1.0, n_items) + 0.4 * self.appeal) * cat_weight[self.cat]
        self.ids = [f"p{i + 1}" for i in range(n_items)]
        self.by_cat = [np.flatnonzero(self.cat == c) for c in range(n_cat)]
        self.cat_pop = np.array([self.pop[ix].sum() for ix in self.by_cat])
        self.global_cdf = np.cumsum(self.pop) / self.pop.sum()
        self.cat_cdf = np.cumsum(self.cat_pop) / self.cat_pop.sum()


class Customer:
    __slots__ = ("idx", "cid", "tastes", "sens", "rate", "p_mobile", "buy", "cart", "viewed",
                 "cdf_cache")

    def __init__(self, rng: np.random.Generator, idx: int, catalog: Catalog):
        self.idx = idx
        self.cid = f"c{idx + 1}"
        k = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        self.tastes = [int(c) for c in rng.choice(len(CATEGORIES), size=k, replace=False, p=catalog.cat_pop / catalog.cat_pop.sum())]
        self.sens = float(rng.gamma(2.0, 0.6))  # price sensitivity
        self.rate = float(np.exp(rng.normal(math.log(0.4), 0.8)))  # sessions per day
        self.p_mobile = float(rng.beta(2.0, 2.0))
        self.buy = float(rng.beta(2.0, 5.0))  # buying propensity
        self.cart: dict[int, int] = {}  # item index -> quantity
        self.viewed: list[int] = []  # item indices, most recent last (distinct, <= 30)
        self.cdf_cache: dict[int, np.ndarray] = {}


def item_cdf(cust: Customer, catalog: Catalog, c: int) -> np.ndarray:
    """Per-customer choice distribution over the items of category c (popularity x price fit)."""
    cdf = cust.cdf_cache.get(c)
    if cdf is None:
        ix = catalog.by_cat[c]
        w = catalog.pop[ix] * np.exp(-cust.sens * catalog.price_z[ix])
        cdf = np.cumsum(w) / w.sum()
        cust.cdf_cache[c] = cdf
    return cdf


def draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    return min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)


def next_session_start(rng: np.random.Generator, t_ms: float, rate_per_day: float) -> float:
    """Next point of a Poisson process modulated by HOUR_WEIGHTS (thinning)."""
    while True:
        t_ms += rng.exponential(DAY_MS / rate_per_day)
        hour = int(t_ms // 3_600_000) % 24
        if rng.random() < HOUR_WEIGHTS[hour]:
            return t_ms


def simulate_session(rng, cust: Customer, catalog: Catalog, t: float, sid: str, out: list):
    """Appends (ts, cust_idx, type, item_idx|-1, session_id, props) tuples; returns end time."""
    mobile = rng.random() < cust.p_mobile
    device = "mobile" if mobile else "desktop"
    intent = rng.random() < 0.15 + 0.6 * cust.buy  # this session is a shopping mission
    ci = cust.idx

    def emit(kind, item, props):
        out.append((int(t), ci, kind, item, sid, props))

    def item_props(item, page_kind="p"):
        return {"price": float(catalog.price[item]), "category": CATEGORIES[catalog.cat[item]],
                "page": f"/{page_kind}/{catalog.ids[item][1:]}", "device": device}

    emit("session_start", -1, {"page": "/", "device": device})
    mean_steps = (5.0 if mobile else 7.5) * (1.4 if intent else 1.0)
    n_steps = 1 + int(rng.geometric(1.0 / mean_steps))
    cur_cat = -1
    for _ in range(min(n_steps, 60)):
        t += rng.uniform(2_000, 12_000)
        # occasionally take something back out of the cart
        if cust.cart and rng.random() < 0.035:
            item = list(cust.cart)[int(rng.integers(len(cust.cart)))]
            props = item_props(item, "cart")
            props["page"] = "/cart"
            props["quantity"] = cust.cart.pop(item)
            emit("remove_from_cart", item, props)
            t += rng.uniform(1_000, 5_000)
        r = rng.random()
        if r < 0.08:  # search for a category (mostly one of the tastes)
            c = cust.tastes[int(rng.integers(len(cust.tastes)))] if rng.random() < 0.75 else draw(rng, catalog.cat_cdf)
            cur_cat = c
            emit("search", -1, {"page": f"/search?q={CATEGORIES[c]}", "query": CATEGORIES[c], "device": device})
            continue
        if r < 0.15:  # category listing page
            c = cur_cat if cur_cat >= 0 and rng.random() < 0.5 else (
                cust.tastes[int(rng.integers(len(cust.tastes)))] if rng.random() < 0.6 else draw(rng, catalog.cat_cdf))
            cur_cat = c
            dwell = int(rng.lognormal(math.log(9_000), 0.6))
            emit("page_view", -1, {"page": f"/c/{CATEGORIES[c]}", "category": CATEGORIES[c],
                                   "dwell_ms": dwell, "device": device})
            t += dwell
            continue
        # product page
        revisit = False
        if cust.viewed and rng.random() < (0.28 if intent else 0.16):
            k = len(cust.viewed)
            item = cust.viewed[k - 1 - min(int(rng.geometric(0.25)) - 1, k - 1)]  # recent ones more likely
            revisit = True
        else:
            u = rng.random()
            if cur_cat >= 0 and u < 0.55:
                c = cur_cat
            elif u < 0.85:
                c = cust.tastes[int(rng.integers(len(cust.tastes)))]
            else:
                c = draw(rng, catalog.cat_cdf)
            ix = catalog.by_cat[c]
            item = int(ix[draw(rng, item_cdf(cust, catalog, c))])
        cur_cat = int(catalog.cat[item])
        taste = cur_cat in cust.tastes
        dwell = int(rng.lognormal(math.log(22_000 if taste else 12_000), 0.7))
        props = item_props(item)
        props["dwell_ms"] = dwell
        emit("page_view", item, props)
        if item in cust.viewed:
            cust.viewed.remove(item)
        cust.viewed.append(item)
        if len(cust.viewed) > 30:
            del cust.viewed[0]
        clicked = rng.random() < (0.45 if taste else 0.25)
        if clicked:
            t += rng.uniform(0.1, 0.9) * min(dwell, 30_000)
            cp = item_props(item)
            cp["element"] = ["gallery", "reviews", "size_guide", "specs"][int(rng.integers(4))]
            emit("click", item, cp)
        logit = (-4.5 + 1.1 * taste + 1.1 * intent + 0.9 * catalog.appeal[item]
                 - cust.sens * catalog.price_z[item] + 0.9 * revisit + 0.5 * clicked
                 + 1.5 * (cust.buy - 0.3) + 0.25 * math.log(dwell / 15_000))
        if item not in cust.cart and rng.random() < sigmoid(logit):
            t += rng.uniform(2_000, 10_000)
            q = int(rng.choice([1, 2, 3], p=[0.86, 0.11, 0.03]))
            cp = item_props(item)
            cp["quantity"] = q
            emit("add_to_cart", item, cp)
            cust.cart[item] = q
        t += dwell
    # end of the session: check out the whole cart, or abandon it
    if cust.cart:
        p_checkout = 0.1 + 0.3 * intent + 0.3 * cust.buy
        if rng.random() < p_checkout:
            t += rng.uniform(3_000, 15_000)
            emit("page_view", -1, {"page": "/cart", "dwell_ms": int(rng.uniform(5_000, 40_000)), "device": device})
            t += rng.uniform(20_000, 120_000)
            for item, q in list(cust.cart.items()):
                cp = item_props(item)
                cp["page"] = "/checkout"
                cp["quantity"] = q
                emit("purchase", item, cp)
                t += rng.uniform(50, 400)
            cust.cart.clear()
        elif rng.random() < 0.1:  # carts go stale
            cust.cart.clear()
    return t


def generate(args):
    rng = np.random.default_rng(args.seed)
    catalog = Catalog(rng, args.items)
    start = NOW_MS - args.days * DAY_MS
    customers = [Customer(rng, i, catalog) for i in range(args.customers)]
    raw: list = []
    n_sessions = 0
    for cust in customers:
        crng = np.random.default_rng([args.seed, cust.idx])
        t = next_session_start(crng, start - crng.uniform(0, DAY_MS / cust.rate), cust.rate)
        while t < start:
            t = next_session_start(crng, t, cust.rate)
        while t < NOW_MS - 10 * MIN_MS:
            n_sessions += 1
            sid = f"s-{cust.idx + 1}-{n_sessions}"
            end = simulate_session(crng, cust, catalog, t, sid, raw)
            t = next_session_start(crng, max(end, t) + 5 * MIN_MS, cust.rate)
    raw = [e for e in raw if e[0] < NOW_MS]
    raw.sort(key=lambda e: (e[0], e[1]))  # stable: per-customer order is preserved
    return catalog, customers, raw, n_sessions


def write_events(path, catalog, customers, raw):
    seq = [0] * len(customers)
    per_cust: list[list] = [[] for _ in customers]
    with open(path, "w", encoding="utf-8") as f:
        for n, (ts, ci, kind, item, sid, props) in enumerate(raw):
            seq[ci] += 1
            ev = {"event_id": f"e-{n + 1}", "type": kind, "customer_id": customers[ci].cid, "ts": ts,
                  "session_id": sid}
            if item >= 0:
                ev["item_id"] = catalog.ids[item]
            ev["seq"] = seq[ci]
            ev["props"] = props
            f.write(json.dumps(ev, separators=(",", ":")))
            f.write("\n")
            per_cust[ci].append((ts, kind, item, sid, props.get("device")))
    return per_cust


def write_labels(path, args, catalog, customers, per_cust):
    rng = np.random.default_rng([args.seed, 99])
    first_moment = NOW_MS - (args.days - WARMUP_DAYS) * DAY_MS
    n_items = len(catalog.ids)
    n_pop = (args.negatives * 2) // 5
    n_recent = args.negatives // 4
    n_rows = n_moments = n_pos_moments = n_pos = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["customer_id", "item_id", "ts", "label", "session_id", "context.is_mobile", "context.hour_of_day"])
        rows = []
        for ci, evs in enumerate(per_cust):
            times = [e[0] for e in evs]
            for k, (ts, kind, item, sid, device) in enumerate(evs):
                if kind != "page_view" or item < 0 or ts < first_moment or ts + HORIZON_MS > NOW_MS:
                    continue
                if rng.random() >= args.moment_rate:
                    continue
                moment = ts + 1
                hi = bisect.bisect_right(times, moment + HORIZON_MS)
                pos = []
                for j in range(k + 1, hi):
                    e = evs[j]
                    if e[0] > moment and e[1] in ("add_to_cart", "purchase") and e[2] not in pos:
                        pos.append(e[2])
                if not pos and rng.random() >= args.empty_keep:
                    continue
                exclude = set(pos)
                negs: list[int] = []
                # recently viewed (a realistic candidate source), not positive
                recent = []
                for j in range(k, -1, -1):
                    it = evs[j][2]
                    if evs[j][1] == "page_view" and it >= 0 and it not in recent:
                        recent.append(it)
                        if len(recent) >= 20:
                            break
                for it in rng.permutation(recent)[:n_recent]:
                    if int(it) not in exclude:
                        negs.append(int(it))
                        exclude.add(int(it))
                tries = 0
                while len(negs) < args.negatives and tries < 10 * args.negatives:
                    tries += 1
                    if len(negs) < n_recent + n_pop:
                        it = min(int(np.searchsorted(catalog.global_cdf, rng.random(), side="right")), n_items - 1)
                    else:
                        it = int(rng.integers(n_items))
                    if it not in exclude:
                        negs.append(it)
                        exclude.add(it)
                mobile = 1 if device == "mobile" else 0
                hour = (moment // 3_600_000) % 24
                cid = customers[ci].cid
                for it in pos:
                    rows.append((moment, cid, catalog.ids[it], 1, sid, mobile, hour))
                for it in negs:
                    rows.append((moment, cid, catalog.ids[it], 0, sid, mobile, hour))
                n_moments += 1
                n_pos += len(pos)
                n_pos_moments += bool(pos)
        rows.sort(key=lambda r: (r[0], r[1], -r[3], r[2]))
        for (moment, cid, iid, label, sid, mobile, hour) in rows:
            w.writerow([cid, iid, moment, label, sid, mobile, hour])
        n_rows = len(rows)
    return n_rows, n_moments, n_pos_moments, n_pos


BRANDS = ["acme", "globex", "initech", "umbrella", "stark", "wayne", "hooli", "vandelay"]
COUNTRIES = ["FR", "DE", "US", "GB", "ES", "IT", "NL", "SE"]


def write_static(items_path, customers_path, args, catalog, customers):
    """Catalog and profiles for the `static` features (own random stream)."""
    rng = np.random.default_rng([args.seed, 7])
    with open(items_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["item_id", "category", "price", "brand", "margin", "in_stock"])
        for i, iid in enumerate(catalog.ids):
            w.writerow([iid, CATEGORIES[catalog.cat[i]], f"{catalog.price[i]:.2f}",
                        BRANDS[int(rng.integers(len(BRANDS)))],
                        f"{float(rng.uniform(0.05, 0.6)):.3f}",
                        "true" if rng.random() < 0.93 else "false"])
    with open(customers_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["customer_id", "segment", "country", "lifetime_value"])
        for c in customers:
            segment = "vip" if c.buy > 0.45 else ("regular" if c.buy > 0.2 else "occasional")
            w.writerow([c.cid, segment, COUNTRIES[int(rng.integers(len(COUNTRIES)))],
                        f"{float(rng.gamma(2.0, 150.0 * (0.5 + c.buy))):.2f}"])


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        sys.exit(f"generate.py: cannot create --out-dir {args.out_dir}: {e}")
    catalog, customers, raw, n_sessions = generate(args)
    events_path = os.path.join(args.out_dir, "events.jsonl")
    labels_path = os.path.join(args.out_dir, "labels.csv")
    per_cust = write_events(events_path, catalog, customers, raw)
    n_rows, n_moments, n_pos_moments, n_pos = write_labels(labels_path, args, catalog, customers, per_cust)
    write_static(os.path.join(args.out_dir, "items.csv"), os.path.join(args.out_dir, "customers.csv"),
                 args, catalog, customers)
    counts: dict[str, int] = {}
    for e in raw:
        counts[e[2]] = counts.get(e[2], 0) + 1
    print(f"events: {len(raw)} in {n_sessions} sessions -> {events_path}")
    print("  " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print(f"labels: {n_rows} rows, {n_moments} decision moments ({n_pos_moments} with positives, "
          f"{n_pos} positives) -> {labels_path}")
    print(f"generate.py: {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
