// Generates nextbest.global.js (a classic script defining `window.nextbest`)
// from nextbest.js (the ES module): the module's code up to its exports
// marker, wrapped in a function. No bundler. `node build.mjs` writes the
// file; `node build.mjs --check` exits 1 if it is not up to date (the unit
// tests check the same).
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const MARKER = "// ---- exports (build.mjs replaces everything from this line on) ----";

/** The classic script for the module source `src`. */
export function classicBuild(src) {
  const at = src.indexOf(MARKER);
  if (at < 0) throw new Error(`nextbest.js: the exports marker is missing: ${MARKER}`);
  const body = src.slice(0, at).trimEnd();
  if (/^\s*(export|import)\s/m.test(body)) throw new Error("nextbest.js: import/export found above the exports marker");
  const indented = body
    .split("\n")
    .map((l) => (l ? `  ${l}` : l))
    .join("\n");
  return [
    "// GENERATED from nextbest.js by build.mjs: do not edit (run `node web/sdk/build.mjs`).",
    "// The nextbest SDK as a classic script: <script src=\".../nextbest.global.js\"></script>",
    "// defines `window.nextbest`.",
    "(function (root) {",
    '  "use strict";',
    indented,
    "  root.nextbest = nextbest;",
    '})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this);',
    "",
  ].join("\n");
}

export const paths = {
  module: join(here, "nextbest.js"),
  classic: join(here, "nextbest.global.js"),
};

if (import.meta.url === `file://${process.argv[1]}`) {
  const want = classicBuild(readFileSync(paths.module, "utf8"));
  if (process.argv.includes("--check")) {
    let have = "";
    try {
      have = readFileSync(paths.classic, "utf8");
    } catch (_) {
      // missing
    }
    if (have !== want) {
      console.error("web/sdk/nextbest.global.js is out of date: run `node web/sdk/build.mjs`");
      process.exit(1);
    }
  } else {
    writeFileSync(paths.classic, want);
    console.log(`wrote ${paths.classic}`);
  }
}
