// Writes the demo catalog, web/store/catalog.jsonl: 320 products over 8
// categories with names, brands, prices, margins, stock and the colours the
// storefront draws their SVG pictures with. Deterministic (a seeded PRNG):
// running it again writes the same file. One JSON object a line, as
// `nextbest backfill --items` reads it (item_id + the item `static` columns
// of feature-store/features.toml: price, category, brand, margin, in_stock;
// the other fields are for the page and ignored by the backfill).
//
//   node web/store/make-catalog.mjs            # writes catalog.jsonl
//   node web/store/make-catalog.mjs --check    # exits 1 if it differs
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const CATEGORIES = [
  { id: "shoes", label: "Shoes", nouns: ["Trail Runner", "Court Sneaker", "Chelsea Boot", "Canvas Slip-On", "Hiking Boot", "Road Racer", "Leather Loafer", "Studio Trainer"], min: 39, max: 189, brands: ["Stride", "Northpeak", "Asphalt", "Kiln & Co"] },
  { id: "jackets", label: "Jackets", nouns: ["Down Parka", "Rain Shell", "Denim Jacket", "Fleece Zip", "Quilted Vest", "Wool Overcoat", "Windbreaker", "Field Jacket"], min: 59, max: 329, brands: ["Northpeak", "Harbor", "Fjellby", "Outline"] },
  { id: "bags", label: "Bags", nouns: ["Day Pack", "Tote", "Messenger", "Duffel", "Sling Bag", "Laptop Sleeve", "Roll-Top Pack", "Weekender"], min: 24, max: 229, brands: ["Carryall", "Harbor", "Kiln & Co", "Transit"] },
  { id: "watches", label: "Watches", nouns: ["Field Watch", "Dive Watch", "Chronograph", "Minimal Watch", "Smart Band", "Pilot Watch", "Dress Watch", "GMT Watch"], min: 79, max: 449, brands: ["Meridian", "Tempo", "Outline", "Lumen"] },
  { id: "audio", label: "Audio", nouns: ["Wireless Earbuds", "Studio Headphones", "Bluetooth Speaker", "Noise-Cancelling Headphones", "Bookshelf Speaker", "Sport Earbuds", "Turntable", "Soundbar"], min: 29, max: 349, brands: ["Lumen", "Echo Lab", "Tempo", "Basswood"] },
  { id: "home", label: "Home", nouns: ["Table Lamp", "Linen Throw", "Ceramic Vase", "Wall Clock", "Floor Cushion", "Scented Candle", "Woven Basket", "Desk Lamp"], min: 14, max: 149, brands: ["Kiln & Co", "Hearth", "Fjellby", "Loom"] },
  { id: "kitchen", label: "Kitchen", nouns: ["Chef's Knife", "Pour-Over Set", "Cast Iron Pan", "Stoneware Mug", "Espresso Cups", "Cutting Board", "Tea Kettle", "Mixing Bowls"], min: 9, max: 129, brands: ["Hearth", "Copperline", "Kiln & Co", "Grain"] },
  { id: "fitness", label: "Fitness", nouns: ["Yoga Mat", "Kettlebell", "Jump Rope", "Resistance Bands", "Foam Roller", "Water Bottle", "Dumbbell Pair", "Training Gloves"], min: 9, max: 159, brands: ["Stride", "Ironleaf", "Basswood", "Pulse"] },
];

const COLORS = [
  ["Charcoal", 220, 8, 30],
  ["Sand", 38, 45, 72],
  ["Forest", 150, 40, 32],
  ["Navy", 222, 55, 30],
  ["Rust", 16, 65, 48],
  ["Sage", 110, 20, 60],
  ["Ivory", 45, 40, 88],
  ["Plum", 300, 30, 36],
  ["Ocean", 195, 60, 42],
  ["Mustard", 45, 80, 52],
];
const ADJECTIVES = ["Classic", "Everyday", "Pro", "Lite", "Heritage", "Urban", "Alpine", "Essential", "Signature", "Voyager"];

export function makeCatalog() {
  const rand = mulberry32(20261202);
  const pick = (xs) => xs[Math.floor(rand() * xs.length)];
  const items = [];
  let n = 0;
  for (const cat of CATEGORIES) {
    for (let i = 0; i < 40; i++) {
      n += 1;
      const noun = cat.nouns[i % cat.nouns.length];
      const [color, hue, sat, light] = pick(COLORS);
      const brand = pick(cat.brands);
      const adjective = pick(ADJECTIVES);
      // prices skewed low, ending in .99 or .00
      const raw = cat.min + (cat.max - cat.min) * rand() ** 1.6;
      const price = rand() < 0.7 ? Math.floor(raw) + 0.99 : Math.round(raw);
      items.push({
        item_id: `p-${String(n).padStart(3, "0")}`,
        name: `${brand} ${adjective} ${noun}`,
        category: cat.id,
        price,
        brand,
        margin: Math.round((0.15 + rand() * 0.4) * 100) / 100,
        in_stock: rand() < 0.97 ? 1 : 0,
        color,
        hue,
        sat,
        light,
        rating: Math.round((3.4 + rand() * 1.6) * 10) / 10,
        reviews: Math.floor(rand() * 900) + 3,
        shape: i % cat.nouns.length,
      });
    }
  }
  return items;
}

export const catalogPath = join(dirname(fileURLToPath(import.meta.url)), "catalog.jsonl");

export function catalogText(items = makeCatalog()) {
  return items.map((x) => JSON.stringify(x)).join("\n") + "\n";
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const text = catalogText();
  if (process.argv.includes("--check")) {
    if (readFileSync(catalogPath, "utf8") !== text) {
      console.error("web/store/catalog.jsonl differs from make-catalog.mjs's output");
      process.exit(1);
    }
  } else {
    writeFileSync(catalogPath, text);
    console.log(`wrote ${catalogPath} (${text.length} bytes)`);
  }
}
