// A real `nextbest serve` for the browser tests and the benchmark: the
// release binary (NEXTBEST_BIN, else target/release/nextbest) on a free
// port, embedded store, the demo catalog and a demo history loaded, its
// log in the test's temp folder.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

export function binary() {
  const bin = process.env.NEXTBEST_BIN || join(repo, "target/release/nextbest");
  if (!existsSync(bin)) throw new Error(`no nextbest binary at ${bin}: run \`make build\` or set NEXTBEST_BIN`);
  return bin;
}

/**
 * Starts the server; resolves once /healthz answers (at most 60 s).
 * `config`: the text of its nextbest.toml; `env`: more environment (e.g.
 * NEXTBEST_REDIS_URL, NEXTBEST_KAFKA_BROKERS, which are otherwise unset).
 */
export async function startServer({ dir = mkdtempSync(join(tmpdir(), "nextbest-web-")), env = {}, config = "", name = "server" } = {}) {
  const port = await freePort();
  const history = join(dir, "history.jsonl");
  writeFileSync(history, execFileSync(process.execPath, [join(repo, "web/store/make-history.mjs")], { maxBuffer: 64 << 20 }));
  const logPath = join(dir, `${name}.log`);
  const configPath = join(dir, `${name}.toml`);
  writeFileSync(configPath, config);
  const log = openSync(logPath, "w");
  const childEnv = {
    ...process.env,
    NEXTBEST_HTTP_ADDR: `127.0.0.1:${port}`,
    ORT_DYLIB_PATH: process.env.ORT_DYLIB_PATH || join(repo, ".deps/lib/libonnxruntime.so.1.31.1"),
    RUST_LOG: "info,rdkafka=warn",
  };
  delete childEnv.NEXTBEST_REDIS_URL;
  delete childEnv.NEXTBEST_KAFKA_BROKERS;
  delete childEnv.NEXTBEST_CONFIG;
  Object.assign(childEnv, env);
  const child = spawn(binary(), ["--config", configPath, "serve", "--backfill-items", join(repo, "web/store/catalog.jsonl"), "--backfill-events", history], {
    cwd: repo,
    env: childEnv,
    stdio: ["ignore", log, log],
  });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode != null) throw new Error(`nextbest serve exited (${child.exitCode}):\n${readFileSync(logPath, "utf8")}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) break;
    } catch (_) {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`nextbest serve did not answer within 60 s:\n${readFileSync(logPath, "utf8")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    base,
    dir,
    log: () => readFileSync(logPath, "utf8"),
    async stop() {
      if (child.exitCode != null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Headless Chromium from Debian's package (never a downloaded browser). */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(executablePath)) throw new Error(`no Chromium at ${executablePath}: scripts/setup.sh installs Debian's chromium`);
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"],
  });
}

export function catalog() {
  return readFileSync(join(repo, "web/store/catalog.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
}
