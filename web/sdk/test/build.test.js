// The classic-script build is the ES module's code, up to date, and works
// as a plain <script> (no module system); the .d.ts names every public call.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";
import { classicBuild, paths } from "../build.mjs";
import esm, { Client } from "../nextbest.js";
import { fakeEnv } from "./fakes.js";

test("nextbest.global.js is generated from nextbest.js and up to date", () => {
  const want = classicBuild(readFileSync(paths.module, "utf8"));
  assert.equal(readFileSync(paths.classic, "utf8"), want, "run `node web/sdk/build.mjs`");
  assert.throws(() => classicBuild("const a = 1;\n"), /marker/);
});

test("the classic script defines window.nextbest with the module's API", async () => {
  const window = { setTimeout, clearTimeout };
  window.window = window;
  vm.createContext(window);
  vm.runInContext(readFileSync(paths.classic, "utf8"), window, { filename: "nextbest.global.js" });
  const nb = window.nextbest;
  assert.ok(nb, "window.nextbest is defined");
  assert.deepEqual(Object.keys(nb).sort(), Object.keys(esm).sort());
  assert.equal(nb.VERSION, esm.VERSION);
  const env = fakeEnv();
  const c = nb.createClient({ endpoint: "https://api.example", customerId: "g1" }, env);
  c.track("click", { item_id: "p1" });
  await c.flush();
  assert.equal(env.fetch.calls.length, 1);
  assert.equal(env.fetch.calls[0].json[0].item_id, "p1");
});

test("the .d.ts declares every public method", () => {
  const dts = readFileSync(new URL("../nextbest.d.ts", import.meta.url), "utf8");
  const methods = Object.getOwnPropertyNames(Client.prototype).filter((m) => m !== "constructor" && !m.startsWith("_"));
  for (const m of methods) assert.match(dts, new RegExp(`\\b${m}\\(`), `Client.${m} in nextbest.d.ts`);
  for (const k of Object.keys(esm).filter((k) => !k.startsWith("_"))) assert.match(dts, new RegExp(`\\b${k}\\b`), `nextbest.${k} in nextbest.d.ts`);
});
