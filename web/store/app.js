// The demo storefront: a small shop (catalog, product pages, cart) on the
// nextbest SDK. Every click, view and cart change is tracked; the
// "Recommended for you" panel is whatever /v1/stream pushes after each
// change of this shopper's features, with its actions (upsell,
// complete_purchase) and reasons; the live panel shows the measured click →
// update latency and the shopper's features as the server holds them.
//
// Hooks for tests (a contract): product tiles and links carry
// data-item-id, the add-to-cart button data-action="add-to-cart", the panel
// is #recommendations and each item in it carries data-item-id and
// data-action (its action).
import nextbest from "/sdk/nextbest.js";
import { productSvg, LOGO } from "/store/images.js";

const CATEGORIES = [
  ["shoes", "Shoes"],
  ["jackets", "Jackets"],
  ["bags", "Bags"],
  ["watches", "Watches"],
  ["audio", "Audio"],
  ["home", "Home"],
  ["kitchen", "Kitchen"],
  ["fitness", "Fitness"],
];
const LABEL = Object.fromEntries(CATEGORIES);
const FREE_SHIPPING = 100;
const CART_KEY = "northwind:cart";
const K = 6;

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const $ = (sel, root = document) => root.querySelector(sel);

const state = {
  catalog: [],
  byId: new Map(),
  cart: loadCart(),
  rec: null,
  pushes: 0,
  pending: null, // {t0, what} of the last interaction awaiting a push
  latencies: [],
  streamStatus: "connecting",
};

const client = nextbest.init({ endpoint: "", flushIntervalMs: 250 });

// ---------------------------------------------------------------- cart

function loadCart() {
  try {
    const c = JSON.parse(localStorage.getItem(CART_KEY) || "[]");
    return Array.isArray(c) ? c.filter((l) => l && l.item_id && l.quantity > 0) : [];
  } catch (_) {
    return [];
  }
}
function saveCart() {
  localStorage.setItem(CART_KEY, JSON.stringify(state.cart));
}
const cartCount = () => state.cart.reduce((n, l) => n + l.quantity, 0);
const cartTotal = () => state.cart.reduce((s, l) => s + l.quantity * (state.byId.get(l.item_id)?.price ?? 0), 0);

function addToCart(item) {
  const line = state.cart.find((l) => l.item_id === item.item_id);
  if (line) line.quantity += 1;
  else state.cart.push({ item_id: item.item_id, quantity: 1 });
  saveCart();
  interaction("add to cart");
  client.track("add_to_cart", { item_id: item.item_id, price: item.price, quantity: 1, category: item.category, page: location.pathname });
  client.flush();
  renderCartBadge();
  const note = $(".product-info .note");
  if (note) note.textContent = shippingNote();
  toast(`Added <b>${esc(item.name)}</b> to your cart`);
}

function removeFromCart(itemId, all) {
  const line = state.cart.find((l) => l.item_id === itemId);
  const item = state.byId.get(itemId);
  if (!line || !item) return;
  const n = all ? line.quantity : 1;
  line.quantity -= n;
  state.cart = state.cart.filter((l) => l.quantity > 0);
  saveCart();
  interaction("remove from cart");
  client.track("remove_from_cart", { item_id: itemId, price: item.price, quantity: n, category: item.category, page: location.pathname });
  client.flush();
  renderCartBadge();
  render();
}

function checkout() {
  if (state.cart.length === 0) return;
  interaction("purchase");
  for (const l of state.cart) {
    const item = state.byId.get(l.item_id);
    if (item) client.track("purchase", { item_id: l.item_id, price: item.price, quantity: l.quantity, category: item.category, page: "/cart" });
  }
  client.flush();
  const total = cartTotal();
  state.cart = [];
  saveCart();
  renderCartBadge();
  $("#view").innerHTML = `<section class="thanks"><h1>Thank you!</h1>
    <p>Your order of ${money.format(total)} is on its way. A receipt is in your inbox (not really: this is a demo).</p>
    <a class="button" href="/" data-link>Continue shopping</a></section>`;
}

// ---------------------------------------------------------------- tracking

/** Marks the moment of a shopper's action; the next push measures the latency from it. */
function interaction(what) {
  state.pending = { t0: performance.now(), what };
}

document.addEventListener("click", (e) => {
  const link = e.target.closest("a[href]");
  const tracked = e.target.closest("[data-item-id]");
  if (tracked && tracked.matches("a")) {
    const item = state.byId.get(tracked.dataset.itemId);
    interaction("click");
    client.track("click", {
      item_id: tracked.dataset.itemId,
      ...(item ? { price: item.price, category: item.category } : {}),
      page: location.pathname,
    });
  }
  const add = e.target.closest('[data-action="add-to-cart"]');
  if (add) {
    e.preventDefault();
    const item = state.byId.get(add.dataset.itemId);
    if (item) addToCart(item);
    return;
  }
  const act = e.target.closest("[data-cart]");
  if (act) {
    e.preventDefault();
    if (act.dataset.cart === "checkout") checkout();
    else if (act.dataset.cart === "inc") addToCart(state.byId.get(act.dataset.id));
    else removeFromCart(act.dataset.id, act.dataset.cart === "remove");
    if (act.dataset.cart === "inc") render();
    return;
  }
  if (e.target.closest("#new-shopper")) {
    e.preventDefault();
    client.reset();
    state.cart = [];
    state.latencies = [];
    saveCart();
    renderCartBadge();
    renderLive();
    navigate("/");
    return;
  }
  if (link && link.origin === location.origin && !link.target && !e.metaKey && !e.ctrlKey && !link.hasAttribute("download")) {
    e.preventDefault();
    navigate(link.pathname + link.search);
  }
});

function navigate(url) {
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  render();
  window.scrollTo({ top: 0 });
}
window.addEventListener("popstate", render);

// ---------------------------------------------------------------- pages

function stars(r) {
  const full = Math.round(r);
  return `<span class="stars" aria-label="${r} out of 5">${"★".repeat(full)}${"☆".repeat(5 - full)}</span>`;
}

function tile(item) {
  return `<a class="tile" href="/p/${esc(item.item_id)}" data-item-id="${esc(item.item_id)}">
    <div class="pic">${productSvg(item, item.name)}</div>
    <div class="tile-body">
      <div class="brand">${esc(item.brand)}</div>
      <div class="name">${esc(item.name)}</div>
      <div class="meta">${stars(item.rating)} <span class="muted">(${item.reviews})</span></div>
      <div class="price">${money.format(item.price)}</div>
    </div></a>`;
}

function home() {
  const best = [...state.catalog].sort((a, b) => b.reviews * b.rating - a.reviews * a.rating).slice(0, 12);
  const cards = CATEGORIES.map(([id, label]) => {
    const first = state.catalog.find((x) => x.category === id);
    return `<a class="cat-card" href="/c/${id}" data-category="${id}">
      <div class="pic">${first ? productSvg(first, label) : ""}</div><span>${label}</span></a>`;
  }).join("");
  return `<section class="hero">
      <div><p class="eyebrow">The autumn edit</p><h1>Gear for the season ahead</h1>
      <p>Boots, shells and everything in between, picked for you as you browse.</p>
      <a class="button" href="/c/jackets" data-link>Shop jackets</a></div>
    </section>
    <h2 class="section-title">Shop by category</h2><div class="cats">${cards}</div>
    <h2 class="section-title">Best sellers</h2><div class="grid">${best.map(tile).join("")}</div>`;
}

function category(id, sort) {
  const label = LABEL[id];
  if (!label) return notFound();
  let items = state.catalog.filter((x) => x.category === id);
  if (sort === "price-asc") items = [...items].sort((a, b) => a.price - b.price);
  if (sort === "price-desc") items = [...items].sort((a, b) => b.price - a.price);
  if (sort === "rating") items = [...items].sort((a, b) => b.rating - a.rating);
  const opt = (v, t) => `<option value="${v}"${sort === v ? " selected" : ""}>${t}</option>`;
  return `<nav class="crumbs"><a href="/">Home</a> / ${label}</nav>
    <div class="list-head"><h1>${label}</h1><span class="muted">${items.length} products</span>
      <label class="sort">Sort <select id="sort">${opt("featured", "Featured")}${opt("price-asc", "Price: low to high")}${opt("price-desc", "Price: high to low")}${opt("rating", "Top rated")}</select></label></div>
    <div class="grid">${items.map(tile).join("")}</div>`;
}

function search(q) {
  const words = q.toLowerCase().split(/\s+/).filter(Boolean);
  const items = state.catalog.filter((x) => words.every((w) => `${x.name} ${x.category} ${x.color}`.toLowerCase().includes(w)));
  return `<nav class="crumbs"><a href="/">Home</a> / Search</nav>
    <div class="list-head"><h1>“${esc(q)}”</h1><span class="muted">${items.length} products</span></div>
    <div class="grid">${items.map(tile).join("") || `<p class="muted">Nothing matches. Try “boot” or “lamp”.</p>`}</div>`;
}

function product(id) {
  const item = state.byId.get(id);
  if (!item) return notFound();
  const more = state.catalog.filter((x) => x.category === item.category && x.item_id !== id).slice(0, 4);
  const stock = item.in_stock ? `<span class="ok">In stock</span> · ships in 1–2 days` : `<span class="warn">Back in stock soon</span> · order now, ships in 2 weeks`;
  return `<nav class="crumbs"><a href="/">Home</a> / <a href="/c/${item.category}">${LABEL[item.category]}</a> / ${esc(item.name)}</nav>
    <article class="product" data-product-id="${esc(id)}">
      <div class="product-pic">${productSvg(item, item.name)}</div>
      <div class="product-info">
        <div class="brand">${esc(item.brand)}</div>
        <h1>${esc(item.name)}</h1>
        <div class="meta">${stars(item.rating)} ${item.rating} · <span class="muted">${item.reviews} reviews</span></div>
        <div class="price big">${money.format(item.price)}</div>
        <p>Colour: <b>${esc(item.color)}</b></p>
        <p class="muted">${stock}</p>
        <button class="button add" data-action="add-to-cart" data-item-id="${esc(id)}">Add to cart</button>
        <p class="note">${shippingNote()}</p>
        <p>${esc(describe(item))}</p>
      </div>
    </article>
    <h2 class="section-title">More in ${LABEL[item.category]}</h2>
    <div class="grid small">${more.map(tile).join("")}</div>`;
}

function shippingNote() {
  const left = Math.max(0, FREE_SHIPPING - cartTotal());
  return left > 0 ? `Add ${money.format(left)} more for free shipping.` : "Your order ships free.";
}

function describe(item) {
  return `The ${item.name} by ${item.brand} in ${item.color.toLowerCase()}: made to last, ` +
    `easy to care for, and rated ${item.rating} by ${item.reviews} customers. Free returns within 30 days.`;
}

function cart() {
  if (state.cart.length === 0) {
    return `<section class="empty"><h1>Your cart is empty</h1><p class="muted">Find something you like.</p><a class="button" href="/">Start shopping</a></section>`;
  }
  const total = cartTotal();
  const left = Math.max(0, FREE_SHIPPING - total);
  const lines = state.cart
    .map((l) => {
      const it = state.byId.get(l.item_id);
      if (!it) return "";
      return `<li class="line">
        <a class="line-pic" href="/p/${esc(it.item_id)}" data-item-id="${esc(it.item_id)}">${productSvg(it, it.name)}</a>
        <div class="line-info"><a href="/p/${esc(it.item_id)}" data-item-id="${esc(it.item_id)}">${esc(it.name)}</a>
          <div class="muted">${esc(it.color)} · ${money.format(it.price)}</div>
          <div class="qty"><button data-cart="dec" data-id="${esc(it.item_id)}" aria-label="one less">−</button>
          <span>${l.quantity}</span><button data-cart="inc" data-id="${esc(it.item_id)}" aria-label="one more">+</button>
          <button class="link" data-cart="remove" data-id="${esc(it.item_id)}">Remove</button></div></div>
        <div class="line-total">${money.format(it.price * l.quantity)}</div></li>`;
    })
    .join("");
  return `<h1>Your cart</h1><div class="cart">
    <ul class="lines">${lines}</ul>
    <aside class="summary"><div class="row"><span>Subtotal</span><b id="cart-total">${money.format(total)}</b></div>
      <div class="row"><span>Shipping</span><span>${left > 0 ? money.format(7.95) : "Free"}</span></div>
      <div class="progress"><div style="width:${Math.min(100, (total / FREE_SHIPPING) * 100)}%"></div></div>
      <p class="note">${left > 0 ? `${money.format(left)} away from free shipping` : "You've unlocked free shipping"}</p>
      <button class="button wide" data-cart="checkout">Checkout</button></aside></div>`;
}

function notFound() {
  return `<section class="empty"><h1>Not found</h1><p class="muted">That page is not in this shop.</p><a class="button" href="/">Home</a></section>`;
}

/** Draws the page of the current address and tracks its view. */
function render() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  const view = $("#view");
  let m;
  if ((m = path.match(/^\/p\/([^/]+)$/))) {
    const id = decodeURIComponent(m[1]);
    view.innerHTML = product(id);
    const item = state.byId.get(id);
    if (item) {
      if (!state.pending) interaction("view");
      client.track("page_view", { item_id: id, price: item.price, category: item.category, page: path });
      client.flush();
    }
  } else if ((m = path.match(/^\/c\/([^/]+)$/))) {
    view.innerHTML = category(decodeURIComponent(m[1]), params.get("sort") || "featured");
    const sort = $("#sort");
    if (sort) sort.addEventListener("change", () => navigate(`${path}?sort=${sort.value}`));
    client.track("page_view", { category: decodeURIComponent(m[1]), page: path });
  } else if (path === "/cart") {
    view.innerHTML = cart();
  } else if (path === "/search") {
    view.innerHTML = search(params.get("q") || "");
    client.track("search", { query: params.get("q") || "", page: path });
  } else if (path === "/" || path === "/index.html") {
    view.innerHTML = home();
    client.track("page_view", { page: "/" });
  } else {
    view.innerHTML = notFound();
  }
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", path === a.getAttribute("href"));
}

// ---------------------------------------------------------------- recommendations

const REASONS = {
  popular: "Trending now",
  popular_in_category: "Popular in a category you browse",
  popular_in_recent_categories: "From categories you browse",
  viewed_recently: "You looked at this",
  carted_recently: "In your cart",
  in_cart: "In your cart",
  upsell_over_100: "A step up from your cart",
  page_category_boost: "Matches this page",
  requested: "Picked for this page",
  fallback: "Popular pick",
  model_score: "Ranked for you",
};
const ACTIONS = {
  upsell: ["Upgrade pick", "upsell"],
  complete_purchase: ["Complete your purchase", "complete"],
};
const reasonText = (r) => REASONS[r] || r.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

function onRecommendation(rec) {
  state.pushes += 1;
  if (state.pending) {
    state.latencies.push(performance.now() - state.pending.t0);
    if (state.latencies.length > 200) state.latencies.shift();
    state.lastWhat = state.pending.what;
    state.pending = null;
  }
  const before = new Set((state.rec?.items || []).map((i) => i.item_id));
  state.rec = rec;
  renderRecommendations(before);
  renderLive();
  refreshFeatures();
}

function renderRecommendations(before = new Set()) {
  const panel = $("#recommendations");
  const rec = state.rec;
  panel.dataset.updates = String(state.pushes);
  panel.dataset.requestId = rec?.request_id || "";
  const list = $(".rec-list", panel);
  const items = rec?.items || [];
  if (items.length === 0) {
    list.innerHTML = `<li class="rec-empty muted">Browse a few products and we'll pick some for you.</li>`;
    return;
  }
  list.innerHTML = items
    .map((r) => {
      const it = state.byId.get(r.item_id) || { item_id: r.item_id, name: r.item_id, category: "home", price: 0, hue: 0, sat: 0, light: 60 };
      const [badge, cls] = ACTIONS[r.action] || [];
      const fresh = before.size > 0 && !before.has(r.item_id) ? " fresh" : "";
      // every ranked item has model_score; show it only when it is the one reason
      const shown = (r.reasons || []).length > 1 ? r.reasons.filter((x) => x !== "model_score") : r.reasons || [];
      const texts = [...new Map(shown.map((x) => [reasonText(x), x])).entries()];
      const reasons = texts.map(([text, x]) => `<span class="chip" title="${esc(x)}">${esc(text)}</span>`).join("");
      return `<li><a class="rec${fresh}" href="/p/${esc(r.item_id)}" data-item-id="${esc(r.item_id)}" data-action="${esc(r.action || "recommend")}">
        <div class="rec-pic">${productSvg(it, it.name)}</div>
        <div class="rec-body">${badge ? `<span class="badge ${cls}">${badge}</span>` : ""}
          <div class="name">${esc(it.name)}</div>
          <div class="price">${it.price ? money.format(it.price) : ""}</div>
          <div class="chips">${reasons}</div></div></a></li>`;
    })
    .join("");
}

// ---------------------------------------------------------------- live panel

function percentile(xs, p) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}
const ms = (x) => (x == null ? "–" : `${Math.round(x)} ms`);

function renderLive() {
  const l = state.latencies;
  const rec = state.rec;
  const serverUs = rec?.timings_us ? rec.timings_us.total ?? Object.values(rec.timings_us).reduce((a, b) => Math.max(a, b), 0) : null;
  $("#latency").innerHTML = `
    <div class="kpi"><span>Click → update</span><b id="latency-last">${ms(l[l.length - 1])}</b></div>
    <div class="kpi"><span>p50 / p99 (${l.length})</span><b>${ms(percentile(l, 50))} / ${ms(percentile(l, 99))}</b></div>
    <div class="kpi"><span>Server</span><b>${serverUs == null ? "–" : `${(serverUs / 1000).toFixed(1)} ms`}</b></div>
    <div class="kpi"><span>Model</span><b>${rec?.model ? esc(`${rec.model.name} v${rec.model.version}`) : "–"}${rec?.fallback ? " (fallback)" : ""}</b></div>`;
  $("#shopper").textContent = client.getCustomerId();
  $("#stream-status").textContent = state.streamStatus;
  $("#stream-status").className = `status ${state.streamStatus}`;
}

const SHOWN = ["cart_value", "cart_items", "views_1h", "clicks_1h", "carts_1h", "purchases_7d", "recent_categories", "recent_items"];

async function refreshFeatures() {
  const id = client.getCustomerId();
  let body;
  try {
    const res = await fetch(`/v1/features/customer/${encodeURIComponent(id)}`);
    if (!res.ok) {
      $("#features").innerHTML = `<p class="muted">Features need an admin key (${res.status}).</p>`;
      return;
    }
    body = await res.json();
  } catch (_) {
    return;
  }
  const f = body.features || body;
  const show = (v) => (Array.isArray(v) ? v.slice(0, 4).join(", ") + (v.length > 4 ? " …" : "") : typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(2)) : String(v ?? "–"));
  $("#features").innerHTML = `<table>${SHOWN.filter((k) => k in f)
    .map((k) => `<tr data-feature="${k}"><th>${k}</th><td>${esc(show(f[k]))}</td></tr>`)
    .join("")}</table>`;
}

// ---------------------------------------------------------------- chrome

function renderCartBadge() {
  const n = cartCount();
  const a = $("#cart-link");
  a.dataset.cartCount = String(n);
  $("#cart-count").textContent = String(n);
  $("#cart-sum").textContent = n ? money.format(cartTotal()) : "";
}

let toastTimer = null;
function toast(html) {
  const t = $("#toast");
  t.innerHTML = html;
  t.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove("show"), 2200);
}

function chrome() {
  $("#logo").innerHTML = `${LOGO}<span>Northwind Supply</span>`;
  $("#nav").innerHTML = CATEGORIES.map(([id, label]) => `<a href="/c/${id}" data-category="${id}">${label}</a>`).join("");
  $("#search").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("#q").value.trim();
    if (q) navigate(`/search?q=${encodeURIComponent(q)}`);
  });
}

async function start() {
  chrome();
  const text = await (await fetch("/store/catalog.jsonl")).text();
  state.catalog = text
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
  state.byId = new Map(state.catalog.map((x) => [x.item_id, x]));
  renderCartBadge();
  renderRecommendations();
  renderLive();
  render();
  nextbest.subscribe(onRecommendation, {
    k: K,
    onStatus: (s) => {
      state.streamStatus = s === "open" ? "live" : "reconnecting";
      renderLive();
    },
  });
  refreshFeatures();
  document.body.dataset.ready = "true";
}

start();
