// Drives kiln's dashboard in Debian's Chromium with playwright-core and reports what it saw as
// JSON on stdout; python/tests/test_dashboard.py starts kiln, runs this and asserts on it.
//   node dashboard.mjs CONFIG.json
// CONFIG: { url, screenshots, broken, fraud_rows: [[30 numbers], ...], labels: [0|1, ...],
//          auth_url, auth_token (a server with --auth-token-file and an inference token) }
import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const shot = (page, name) => page.screenshot({ path: join(config.screenshots, `${name}.png`), fullPage: true });

async function infer(rows, key) {
  const body = { id: key, inputs: [{ name: "input", shape: [rows.length, rows[0].length], datatype: "FP32", data: rows.flat() }] };
  const r = await fetch(`${config.url}/v2/models/fraud/infer`, { method: "POST", body: JSON.stringify(body) });
  if (r.status !== 200) throw new Error(`direct infer: ${r.status} ${await r.text()}`);
  return r.json();
}

const profile = mkdtempSync(join(tmpdir(), "kiln-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run"],
});
const report = { console_errors: [] };
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("console", (m) => { if (m.type() === "error") report.console_errors.push(m.text()); });
  page.on("pageerror", (e) => report.console_errors.push(String(e)));

  // 1. The model list.
  await page.goto(`${config.url}/#/`);
  await page.waitForSelector("nav [data-model]");
  report.models = await page.$$eval("nav [data-model]", (links) => links.map((a) => a.dataset.model));
  report.home_rows = await page.$$eval("#detail table tr", (rows) => rows.length - 1);
  await shot(page, "models");

  // 2. A model that failed to load shows why.
  await page.goto(`${config.url}/#/m/${config.broken}/overview`);
  await page.waitForSelector("[data-testid=load-error]");
  report.load_error = await page.textContent("[data-testid=load-error]");
  await shot(page, "load-error");

  // 3. Try it: a pasted CSV line for fraud, probabilities shown as bars.
  await page.goto(`${config.url}/#/m/fraud/try`);
  await page.waitForSelector("textarea[data-input=input]");
  await page.fill("textarea[data-input=input]", config.fraud_rows[0].join(","));
  await page.click("[data-testid=try-form] button[type=submit]");
  await page.waitForSelector("[data-output=probabilities] [data-value]");
  report.try_probabilities = await page.$$eval("[data-output=probabilities] [data-row='0'] [data-value]",
    (cells) => cells.map((c) => ({ label: c.dataset.label, value: Number(c.dataset.value) })));
  report.try_bars = await page.$$eval("[data-output=probabilities] .fill", (bars) => bars.length);
  await shot(page, "try-it");
  // A malformed row is refused in the page with a message, not sent.
  await page.fill("textarea[data-input=input]", "1,2,3");
  await page.click("[data-testid=try-form] button[type=submit]");
  await page.waitForSelector("[data-testid=try-result] .error");
  report.try_bad_row = await page.textContent("[data-testid=try-result] .error");

  // 4. Live: the request count rises after requests are sent.
  await page.goto(`${config.url}/#/m/fraud/live`);
  await page.waitForSelector("[data-testid=total-requests]");
  await page.waitForTimeout(2500); // one sampling interval, so the baseline is current
  report.live_before = Number(await page.textContent("[data-testid=total-requests]"));
  for (let i = 0; i < config.fraud_rows.length; i++) {
    const answer = await infer([config.fraud_rows[i]], `e2e-${i}`);
    if (i === 0) report.direct_probabilities = answer.outputs.find((o) => o.name === "probabilities").data;
  }
  report.sent = config.fraud_rows.length;
  await page.waitForFunction((before) => Number(document.querySelector("[data-testid=total-requests]").textContent) > before,
    report.live_before, { timeout: 20000 });
  report.live_after = Number(await page.textContent("[data-testid=total-requests]"));
  report.charts = await page.$$eval("[data-chart] polyline", (lines) => lines.length);
  await shot(page, "live");

  // 5. A pipeline drawn as its step graph.
  await page.goto(`${config.url}/#/m/fraud_ensemble/overview`);
  await page.waitForSelector("[data-testid=pipeline-graph] [data-step]");
  report.pipeline_nodes = await page.$$eval("[data-testid=pipeline-graph] [data-step]", (g) => g.map((n) => n.dataset.step));
  await shot(page, "pipeline");

  // 5b. An LLM: the overview says what it is; the chat box streams an answer and says how fast.
  await page.goto(`${config.url}/#/m/smollm2/overview`);
  await page.waitForSelector("nav [data-model=smollm2] .tag");
  report.llm_tag = await page.textContent("nav [data-model=smollm2] .tag");
  await page.goto(`${config.url}/#/m/smollm2/try`);
  await page.waitForSelector("[data-testid=chat-input]");
  await page.fill("[data-testid=chat-input]", "Say hello in five words.");
  await page.click("[data-testid=chat-form] button[type=submit]");
  await page.waitForFunction(() => /tokens\/s/.test(document.querySelector("[data-testid=chat-stats]").textContent),
    null, { timeout: 60000 });
  report.chat_answer = await page.textContent("[data-testid=chat-answer]");
  report.chat_stats = await page.textContent("[data-testid=chat-stats]");
  await shot(page, "chat");

  // 6. Records: feedback for the requests just sent, then recent predictions and quality.
  for (let i = 0; i < config.labels.length; i++) {
    const r = await fetch(`${config.url}/v1/feedback`, { method: "POST", body: JSON.stringify({ key: `e2e-${i}`, label: config.labels[i] }) });
    if (!r.ok) throw new Error(`feedback: ${r.status} ${await r.text()}`);
  }
  await page.goto(`${config.url}/#/m/fraud/records`);
  await page.waitForSelector("[data-testid=predictions] table tr:nth-child(2)");
  await page.waitForSelector("[data-testid=quality] [data-chart=accuracy] polyline", { state: "attached", timeout: 20000 });
  report.prediction_rows = await page.$$eval("[data-testid=predictions] table tr", (rows) => rows.length - 1);
  report.quality_accuracy = await page.textContent("[data-testid=quality] [data-chart=accuracy] .now");
  await page.waitForSelector("[data-testid=drift] .state", { timeout: 20000 });
  report.drift_state = await page.getAttribute("[data-testid=drift] .state", "data-state");
  await shot(page, "records");

  // 7. With --auth-token-file: the page asks for a token, then shows the models.
  if (config.auth_url) {
    const auth = await browser.newPage();
    await auth.goto(`${config.auth_url}/#/`);
    await auth.waitForSelector("#token-dialog:not([hidden])");
    report.auth_prompt = await auth.textContent("#token-reason");
    await auth.fill("#token-input", config.auth_token);
    await auth.click("#token-form button[type=submit]");
    await auth.waitForSelector("nav [data-model]");
    report.auth_models = await auth.$$eval("nav [data-model]", (links) => links.length);
    await auth.goto(`${config.auth_url}/#/m/fraud/records`);
    await auth.waitForSelector("[data-testid=predictions] .error");
    report.auth_records = await auth.textContent("[data-testid=predictions] .error");
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
