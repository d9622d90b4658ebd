// A tiny JSON-lines remote control for headless Debian Chromium, driven by the Python tests:
// one command per stdin line, one JSON answer per stdout line. Commands:
//   {"op": "goto", "url": U}                          -> {"ok": true}
//   {"op": "wait", "selector": S, "text": T?, "pattern": RE?, "gone": bool?, "timeout": ms?}
//                                                     -> {"ok": true} once S (containing T and
//                                                        matching RE) is
//                                                        there (or gone), else {"ok": false, "error"}
//   {"op": "texts", "selector": S}                    -> {"ok": true, "texts": [...]}
//   {"op": "screenshot", "path": P}                   -> {"ok": true}
//   {"op": "errors"}                                  -> {"ok": true, "errors": [...page errors]}
//   {"op": "eval", "js": EXPR}                        -> {"ok": true, "value": V}, V = what the
//                                                        page's EXPR gives (awaited)
// Names under .test resolve to 127.0.0.1, so a test can serve a page from a second origin
// without leaving loopback.
import { chromium } from "playwright-core";
import readline from "node:readline";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP *.test 127.0.0.1"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

async function run(c) {
  switch (c.op) {
    case "goto":
      await page.goto(c.url, { waitUntil: "load" });
      return {};
    case "wait": {
      let locator = page.locator(c.selector);
      if (c.text) locator = locator.filter({ hasText: c.text });
      if (c.pattern) locator = locator.filter({ hasText: new RegExp(c.pattern) });
      await locator.first().waitFor({ state: c.gone ? "detached" : "attached", timeout: c.timeout ?? 5000 });
      return {};
    }
    case "texts":
      return { texts: await page.locator(c.selector).allTextContents() };
    case "screenshot":
      await page.screenshot({ path: c.path, fullPage: true });
      return {};
    case "errors":
      return { errors };
    case "eval":
      return { value: await page.evaluate(c.js) };
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
console.log(JSON.stringify({ ok: true, ready: true }));
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = { ok: true, ...(await run(JSON.parse(line))) };
  } catch (e) {
    answer = { ok: false, error: String(e.message || e) };
  }
  console.log(JSON.stringify(answer));
}
await browser.close();
