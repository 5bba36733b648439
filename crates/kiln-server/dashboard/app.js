// kiln's dashboard: plain JavaScript, no dependencies, compiled into the binary.
// Routes: #/ (all models), #/m/<model>/<tab> with tab = overview | live | try | records.
"use strict";

const state = { models: [], records: false, live: {}, interval: 2, route: { model: null, tab: "overview" }, timer: null };

// ---------- API: every call carries the token when there is one ----------

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function token() { return sessionStorage.getItem("kiln-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) {
    // v2 answers write NaN and ±Infinity as bare tokens (as Triton does); JSON.parse refuses
    // them, so show them as strings.
    const quoted = text.replace(/(?<=[\[,:]\s*)(NaN|-?Infinity)(?=\s*[\],}])/g, '"$1"');
    try { body = JSON.parse(quoted); } catch (_) { body = null; }
  }
  if (!response.ok) {
    const message = (body && body.error) || text || response.statusText;
    if (response.status === 401) askToken("This server asks for a bearer token: " + message);
    throw new HttpError(response.status, message);
  }
  return body;
}

function askToken(reason) {
  document.getElementById("token-reason").textContent = reason;
  document.getElementById("token-dialog").hidden = false;
  document.getElementById("token-input").focus();
}

// ---------- small DOM helpers ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "width") node.style.width = v; // CSSOM, which the page's CSP allows (style attributes it does not)
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmt(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en-US");
  return Number(x).toFixed(digits);
}

function table(headers, rows) {
  return el("table", {}, el("tr", {}, headers.map((h) => el("th", { text: h }))),
    rows.map((r) => el("tr", {}, r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: c ?? "" }))))));
}

function errorBox(e) {
  const hint = e.status === 403 ? " (this needs a token with the admin scope)" : "";
  return el("div", { class: "error" }, `${e.status ? e.status + ": " : ""}${e.message}${hint}`);
}

// ---------- models list ----------

async function loadModels() {
  const doc = await api("/v1/dashboard/models");
  state.models = doc.models;
  state.records = doc.records;
  document.getElementById("server").textContent = `${doc.server.name} ${doc.server.version}`;
}

function latest(name) {
  const points = state.live[name] || [];
  return points.length ? points[points.length - 1] : null;
}

function renderNav() {
  const nav = document.getElementById("models");
  nav.replaceChildren(
    el("a", { href: "#/", class: state.route.model ? "" : "selected" }, el("span", { class: "name", text: "All models" })),
    ...state.models.map((m) => {
      const now = latest(m.name);
      return el("a", {
        href: `#/m/${encodeURIComponent(m.name)}/overview`, "data-model": m.name,
        class: state.route.model === m.name ? "selected" : "",
      },
      el("span", { class: m.state === "READY" ? "dot" : "dot bad", title: m.state }),
      el("span", { class: "name", text: m.name }),
      m.kind === "pipeline" || m.kind === "llm" || m.kind === "collection" ? el("span", { class: "tag", text: m.kind }) : null,
      el("span", { class: "rate", text: now ? `${fmt(now.requests_per_s, 1)}/s` : "" }));
    }));
}

function renderHome() {
  const rows = state.models.map((m) => {
    const now = latest(m.name);
    return [
      el("a", { href: `#/m/${encodeURIComponent(m.name)}/overview`, text: m.name }),
      m.collection ? `collection (${m.collection.count} × ${m.collection.dim}, ${m.collection.metric}, ${m.collection.index.kind})` : m.kind,
      m.state, m.versions.map((v) => v.version).join(", "),
      now ? fmt(now.requests_per_s, 1) : "–", now ? fmt(now.p99_ms) : "–",
      now ? String(now.total_requests) : "–", m.reason || "",
    ];
  });
  return [el("h2", { text: "Models and collections" }),
    table(["model", "kind", "state", "versions", "req/s", "p99 ms", "requests", "reason"], rows)];
}

// ---------- overview: versions, signature, pipeline graph ----------

function signatureTable(specs) {
  return table(["name", "datatype", "shape", "labels"], specs.map((s) => [
    s.name, s.datatype, JSON.stringify(s.shape), s.labels ? s.labels.join(", ") : "",
  ]));
}

function renderOverview(m) {
  const parts = [];
  if (m.reason) parts.push(el("div", { class: "load-error", "data-testid": "load-error" }, m.reason));
  parts.push(el("h3", { text: "Versions" }), table(["version", "state", "reason"],
    m.versions.map((v) => [v.version, v.state, v.reason || ""])));
  if (m.metadata) {
    parts.push(el("h3", { text: "Inputs" }), signatureTable(m.metadata.inputs));
    parts.push(el("h3", { text: "Outputs" }), signatureTable(m.metadata.outputs));
  }
  if (m.collection) {
    const c = m.collection;
    parts.push(el("h3", { text: "Collection" }), table(
      ["points", "dimension", "metric", "index", "embedder", "memory", "state"],
      [[String(c.count), String(c.dim), c.metric, c.index.kind + (c.index.m ? ` (m ${c.index.m}, ef ${c.index.ef_search})` : ""),
        c.embedder || "—", fmt(c.memory_bytes / 1048576, 1) + " MiB", c.state]]));
  } else if (m.llm) {
    const l = m.llm;
    parts.push(el("h3", { text: "LLM" }), table(
      ["architecture", "parameters", "GGUF", "context", "sequences", "active", "waiting", "chat template"],
      [[l.architecture, fmt(l.parameters / 1e6, 0) + " M", fmt(l.file_bytes / 1048576, 0) + " MiB", String(l.context_length),
        String(l.max_sequences), String(l.active_sequences), String(l.queue_depth), l.chat ? "yes" : "no"]]));
    parts.push(el("p", { class: "muted", text: "Chat with it in “Try it”; OpenAI clients use POST /v1/chat/completions." }));
  } else if (m.settings) {
    const s = m.settings;
    parts.push(el("h3", { text: "Scheduling" }), table(["instances", "max batch size", "dynamic batching", "max queue"],
      [[String(s.instances), String(s.max_batch_size), s.dynamic_batching ? "on" : "off", String(s.max_queue_size)]]));
  }
  if (m.kind === "pipeline" && m.steps) parts.push(el("h3", { text: "Steps" }), pipelineGraph(m));
  return parts;
}

// Layered drawing: inputs in column 0, each step one column right of what it reads, outputs last.
function pipelineGraph(m) {
  const inputs = m.metadata ? m.metadata.inputs.map((i) => i.name) : [];
  const nodes = new Map();
  inputs.forEach((name) => nodes.set("in:" + name, { id: "in:" + name, label: name, sub: "input", kind: "input", reads: [] }));
  const source = (ref) => {
    const dot = ref.indexOf(".");
    return dot > 0 && m.steps.some((s) => s.name === ref.slice(0, dot)) ? ref.slice(0, dot) : "in:" + ref;
  };
  m.steps.forEach((s) => nodes.set(s.name, {
    id: s.name, label: s.name, sub: `${s.kind}: ${s.detail}`.slice(0, 42), kind: s.dormant ? "dormant" : "step",
    reads: s.reads.map(source).concat(s.condition ? [source(s.condition.split(" ")[1])] : []),
    fallback: s.fallback && s.fallback !== "constants" ? s.fallback : null, condition: s.condition,
  }));
  (m.pipeline_outputs || []).forEach((o) => nodes.set("out:" + o.name,
    { id: "out:" + o.name, label: o.name, sub: "output ← " + o.from, kind: "output", reads: [source(o.from)] }));
  const depth = new Map();
  const level = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    const n = nodes.get(id);
    if (!n || seen.has(id)) return 0;
    seen.add(id);
    const d = n.reads.length ? 1 + Math.max(...n.reads.map((r) => level(r, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  nodes.forEach((_, id) => level(id));
  const columns = [];
  nodes.forEach((n, id) => { const d = depth.get(id); (columns[d] = columns[d] || []).push(n); });
  const W = 190, H = 46, GX = 60, GY = 18;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((n, y) => pos.set(n.id, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + columns.length * (W + GX), height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY);
  const graph = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, "data-testid": "pipeline-graph" },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#94a3b8", stroke: "none" }))));
  const edge = (from, to, cls) => {
    const a = pos.get(from), b = pos.get(to);
    if (!a || !b) return;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    graph.append(svg("path", { d: `M${x1},${y1} C${x1 + 30},${y1} ${x2 - 30},${y2} ${x2},${y2}`, class: cls || "" }));
  };
  nodes.forEach((n) => [...new Set(n.reads)].forEach((r) => edge(r, n.id)));
  nodes.forEach((n) => { if (n.fallback) edge(n.id, n.fallback, "fallback"); });
  nodes.forEach((n) => {
    const p = pos.get(n.id);
    graph.append(svg("g", { class: `node ${n.kind}`, transform: `translate(${p.x},${p.y})`, "data-step": n.id },
      svg("rect", { width: W, height: H, rx: 7 }),
      svg("text", { x: 10, y: 19 }, n.label),
      svg("text", { x: 10, y: 35, class: "sub" }, n.condition ? n.condition : n.sub)));
  });
  return el("div", { class: "graph" }, graph);
}

// ---------- live charts ----------

function span(seconds) {
  return seconds < 120 ? `last ${Math.round(seconds)} s` : seconds < 7200 ? `last ${Math.round(seconds / 60)} min` : `last ${Math.round(seconds / 3600)} h`;
}

// `unitSeconds`: time per point (default: the live sampling interval).
function lineChart(title, points, series, unit, unitSeconds) {
  const w = 360, h = 140, pad = 4;
  const values = points.flatMap((p) => series.map((s) => p[s.key])).filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...values) * 1.1;
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" },
    svg("line", { x1: 0, y1: h - pad, x2: w, y2: h - pad, stroke: "#dde2e7" }));
  const n = Math.max(points.length - 1, 1);
  series.forEach((s) => {
    const coords = points.map((p, i) => (p[s.key] === null || p[s.key] === undefined ? null
      : `${(i / n) * w},${h - pad - (p[s.key] / max) * (h - 2 * pad)}`)).filter(Boolean);
    if (coords.length) chart.append(svg("polyline", { points: coords.join(" "), fill: "none", stroke: s.color, "stroke-width": 2 }));
    if (coords.length <= 30) { // few points (a young window, coarse buckets): mark each one
      coords.forEach((c) => { const [x, y] = c.split(","); chart.append(svg("circle", { cx: x, cy: y, r: 3, fill: s.color })); });
    }
  });
  const now = points.length ? points[points.length - 1] : null;
  const label = series.map((s) => `${s.name} ${now ? fmt(now[s.key]) : "–"}`).join(" · ");
  return el("div", { class: "card chart", "data-chart": title },
    el("div", { class: "title" }, el("span", { text: `${title} (${unit})` }), el("span", { class: "now", text: label })),
    chart, el("div", { class: "muted", text: `max ${fmt(max / 1.1)} · ${span(points.length * (unitSeconds || state.interval))}` }));
}

function renderLive(m) {
  const points = state.live[m.name] || [];
  const now = latest(m.name);
  const errorRate = points.map((p) => Object.assign({}, p, { error_pct: p.requests_per_s > 0 ? (100 * p.errors_per_s) / p.requests_per_s : 0 }));
  return [
    el("div", { class: "card" }, el("div", { class: "muted", text: "requests answered" }),
      el("div", { class: "big", "data-testid": "total-requests", text: now ? String(now.total_requests) : "0" })),
    el("div", { class: "charts" },
      lineChart("requests", points, [{ key: "requests_per_s", name: "req/s", color: "#ea580c" }], "per second"),
      lineChart("errors", errorRate, [{ key: "error_pct", name: "error rate", color: "#b91c1c" }], "%"),
      lineChart("latency", points, [{ key: "p50_ms", name: "p50", color: "#2563eb" }, { key: "p99_ms", name: "p99", color: "#7c3aed" }], "ms"),
      lineChart("batch size", points, [{ key: "batch_rows", name: "rows", color: "#059669" }], "rows per execution")),
  ];
}

// ---------- try it ----------

function parseRows(text, width) {
  const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
  if (!lines.length) return [];
  const first = lines.join("\n");
  if (first.startsWith("[")) {
    const parsed = JSON.parse(first);
    const rows = Array.isArray(parsed[0]) ? parsed : [parsed];
    return rows;
  }
  return lines.map((line) => line.split(/[,;\t ]+/).filter(Boolean).map(Number));
}

// ---------- chat with an LLM: streamed from /v1/chat/completions ----------

// Reads server-sent events from a fetch response, calling onData with each parsed `data:`.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

function renderChat(m) {
  if (!m.metadata) return [el("div", { class: "error", text: "This model is not available, so it cannot be tried." })];
  const history = [];
  const log = el("div", { class: "chat-log", "data-testid": "chat-log" });
  const input = el("textarea", { name: "message", placeholder: "Ask something…", "data-testid": "chat-input" });
  const stats = el("p", { class: "muted", "data-testid": "chat-stats" });
  const send = el("button", { type: "submit", class: "primary", text: "Send" });
  const stop = el("button", { type: "button", text: "Stop", disabled: "" });
  const form = el("form", { class: "try chat", "data-testid": "chat-form" }, log, input, el("p", {}, send, " ", stop), stats);
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    history.push({ role: "user", content: text });
    log.append(el("div", { class: "msg user", text }));
    const answer = el("div", { class: "msg assistant", "data-testid": "chat-answer" });
    log.append(answer);
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let first = null, usage = null, finish = null;
    try {
      const headers = { "Content-Type": "application/json" };
      if (token()) headers.Authorization = "Bearer " + token();
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers, signal: controller.signal,
        body: JSON.stringify({ model: m.name, messages: history, stream: true, stream_options: { include_usage: true } }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new HttpError(response.status, (body && body.error && body.error.message) || response.statusText);
      }
      await readEvents(response, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return;
        if (choice.delta && choice.delta.content) {
          if (first === null) first = performance.now() - started;
          answer.textContent += choice.delta.content;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      });
      history.push({ role: "assistant", content: answer.textContent });
      const seconds = (performance.now() - started) / 1000;
      stats.textContent = usage
        ? `${usage.completion_tokens} tokens in ${fmt(seconds, 2)} s · first token after ${fmt(first || 0, 0)} ms · ` +
          `${fmt(usage.completion_tokens / seconds, 1)} tokens/s · finish: ${finish}`
        : "";
    } catch (e) {
      if (e.name === "AbortError") { stats.textContent = "stopped"; history.push({ role: "assistant", content: answer.textContent }); }
      else answer.replaceWith(errorBox(e));
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  });
  return [form];
}

function renderTry(m) {
  if (m.kind === "llm") return renderChat(m);
  if (!m.metadata) return [el("div", { class: "error", text: "This model is not available, so it cannot be tried." })];
  const form = el("form", { class: "try", "data-testid": "try-form" });
  const getters = [];
  m.metadata.inputs.forEach((spec) => {
    const features = spec.shape.length >= 2 ? spec.shape[spec.shape.length - 1] : 1;
    form.append(el("label", { text: `${spec.name} · ${spec.datatype} ${JSON.stringify(spec.shape)}` }));
    if (spec.datatype === "BYTES") {
      const area = el("textarea", { name: spec.name, placeholder: "one text per line (one row each)", "data-input": spec.name });
      form.append(area);
      getters.push(() => {
        const lines = area.value.split("\n").filter((l) => l.length);
        const shape = spec.shape.length >= 2 ? [lines.length, 1] : [lines.length];
        return { name: spec.name, datatype: "BYTES", shape, data: lines };
      });
      return;
    }
    let fields = [];
    if (features > 0 && features <= 12) {
      fields = Array.from({ length: features }, (_, i) => el("input", { type: "number", step: "any", placeholder: `${i}`, "aria-label": `${spec.name}[${i}]` }));
      form.append(el("div", { class: "fields" }, fields));
    }
    const area = el("textarea", { name: spec.name, "data-input": spec.name,
      placeholder: features > 0 ? `or paste rows of ${features} numbers: a JSON row [..], a JSON list of rows, or CSV lines` : "JSON rows" });
    form.append(area);
    getters.push(() => {
      let rows = area.value.trim() ? parseRows(area.value, features) : (fields.length ? [fields.map((f) => Number(f.value || 0))] : []);
      if (!rows.length) throw new Error(`input '${spec.name}': enter a row`);
      rows.forEach((r, i) => {
        if (features > 0 && r.length !== features) throw new Error(`input '${spec.name}': row ${i + 1} has ${r.length} values, the model wants ${features}`);
        if (r.some((v) => typeof v !== "number" || Number.isNaN(v))) throw new Error(`input '${spec.name}': row ${i + 1} holds something that is not a number`);
      });
      const shape = spec.shape.length >= 2 ? [rows.length, rows[0].length] : [rows.flat().length];
      return { name: spec.name, datatype: spec.datatype, shape, data: rows.flat() };
    });
  });
  const result = el("div", { "data-testid": "try-result" });
  form.append(el("p", {}, el("button", { type: "submit", class: "primary", text: "Infer" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let request;
    try {
      request = { inputs: getters.map((g) => g()) };
    } catch (e) {
      result.replaceChildren(errorBox(e));
      return;
    }
    const started = performance.now();
    try {
      const response = await api(`/v2/models/${encodeURIComponent(m.name)}/infer`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      });
      result.replaceChildren(...renderOutputs(m, response, performance.now() - started));
    } catch (e) {
      result.replaceChildren(errorBox(e));
    }
  });
  return [form, result];
}

function renderOutputs(m, response, ms) {
  const parts = [el("p", { class: "muted", text: `${response.model_name} v${response.model_version} answered in ${fmt(ms, 1)} ms` })];
  for (const out of response.outputs) {
    const spec = m.metadata.outputs.find((o) => o.name === out.name) || {};
    const width = out.shape.length >= 2 ? out.shape[out.shape.length - 1] : 1;
    const rows = [];
    for (let i = 0; i < out.data.length; i += width) rows.push(out.data.slice(i, i + width));
    const box = el("div", { class: "card", "data-output": out.name }, el("h3", { text: `${out.name} · ${out.datatype} ${JSON.stringify(out.shape)}` }));
    const isProbabilities = spec.labels && width === spec.labels.length && out.datatype.startsWith("FP");
    rows.slice(0, 20).forEach((row, r) => {
      if (isProbabilities) {
        box.append(el("div", { class: "bars", "data-row": r }, row.map((p, j) => el("div", { class: "bar-row" },
          el("span", { text: spec.labels[j] }),
          el("div", { class: "track" }, el("div", { class: "fill", width: `${Math.max(0, Math.min(1, p)) * 100}%` })),
          el("span", { class: "value", "data-label": spec.labels[j], "data-value": String(p), text: fmt(p, 4) })))));
      } else {
        box.append(el("div", { "data-row": r, class: "values" }, row.map((v) => el("code", { "data-value": String(v), text: typeof v === "number" ? fmt(v, 4) + " " : String(v) + " " }))));
      }
    });
    if (rows.length > 20) box.append(el("p", { class: "muted", text: `… ${rows.length - 20} more rows` }));
    parts.push(box);
  }
  parts.push(el("details", {}, el("summary", { text: "response JSON" }), el("pre", { text: JSON.stringify(response, null, 2) })));
  return parts;
}

// ---------- records ----------

function renderRecords(m) {
  if (!state.records) return [el("div", { class: "card muted", text: "The prediction log is off (kiln serve --records off)." })];
  const outcome = el("select", { name: "outcome" }, ["", "success", "error"].map((o) => el("option", { value: o, text: o || "any outcome" })));
  const key = el("input", { type: "text", name: "key", placeholder: "client key (request id)" });
  const limit = el("select", { name: "limit" }, ["20", "50", "200"].map((n) => el("option", { value: n, text: `${n} rows` })));
  const list = el("div", { "data-testid": "predictions" });
  const quality = el("div", { "data-testid": "quality" });
  const drift = el("div", { "data-testid": "drift" });
  const rollout = el("div", { "data-testid": "rollout" });
  const load = async () => {
    const q = new URLSearchParams({ model: m.name, limit: limit.value });
    if (outcome.value) q.set("outcome", outcome.value);
    if (key.value.trim()) q.set("key", key.value.trim());
    try {
      const page = await api(`/v1/predictions?${q}`);
      list.replaceChildren(page.predictions.length ? table(["time", "id", "version", "protocol", "latency ms", "outcome", "rows", "labels"],
        page.predictions.map((p) => [new Date(p.ts_ms).toLocaleTimeString(), p.id.slice(0, 14) + "…", String(p.version), p.protocol,
          fmt(p.latency_us / 1000), p.outcome + (p.error ? `: ${p.error}` : ""), String(p.rows), p.labels ? JSON.stringify(p.labels) : ""]))
        : el("p", { class: "muted", text: "No predictions match." }));
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
    try {
      const since = Date.now() - 6 * 3600 * 1000;
      const report = await api(`/v1/models/${encodeURIComponent(m.name)}/quality?since=${since}&bucket=600`);
      quality.replaceChildren(renderQuality(report));
    } catch (e) {
      quality.replaceChildren(errorBox(e));
    }
    try {
      drift.replaceChildren(...renderDrift(await api(`/v1/models/${encodeURIComponent(m.name)}/drift`)));
    } catch (e) {
      drift.replaceChildren(errorBox(e));
    }
    if (m.rollout) {
      try {
        rollout.replaceChildren(...renderRollout(await api(`/v1/models/${encodeURIComponent(m.name)}/rollout`)));
      } catch (e) {
        rollout.replaceChildren(errorBox(e));
      }
    }
  };
  const filters = el("form", { class: "card", onsubmit: (e) => { e.preventDefault(); load(); } },
    outcome, " ", key, " ", limit, " ", el("button", { type: "submit", text: "Filter" }));
  load();
  return [el("h3", { text: "Quality over the last 6 hours (10 min buckets)" }), quality,
    el("h3", { text: "Drift: the last hour against the reference" }), drift, rollout,
    el("h3", { text: "Recent predictions" }), filters, list];
}

function renderDrift(report) {
  const ref = report.reference.source === "sample" ? "the export's sample"
    : `the log from ${new Date(report.reference.since_ms).toLocaleTimeString()} to ${new Date(report.reference.until_ms).toLocaleTimeString()}`;
  const head = el("p", {}, el("strong", { class: "state", "data-state": report.state, text: report.state.replace("_", " ") }),
    ` — ${report.recent.requests} recent requests against ${ref} (${report.reference.requests} requests); PSI threshold ${report.threshold}`);
  const parts = [head];
  const features = [...report.features].sort((a, b) => b.psi - a.psi);
  if (features.length) {
    const widest = Math.max(report.threshold * 2, ...features.map((f) => f.psi));
    parts.push(table(["feature", "kind", "PSI", "", "p-value", ""], features.map((f) => [
      f.feature, f.kind, fmt(f.psi, 3),
      el("div", { class: "track" }, el("div", { class: "fill", width: `${Math.min(1, f.psi / widest) * 100}%` })),
      fmt(f.kind === "numeric" ? f.ks_pvalue : f.chi2_pvalue, 4), f.drifted ? "drifted" : ""])));
  }
  if (report.not_compared.length) {
    parts.push(el("details", {}, el("summary", { text: `${report.not_compared.length} not compared` }),
      el("ul", {}, report.not_compared.map((n) => el("li", { text: `${n.feature}: ${n.why}` })))));
  }
  return parts;
}

function renderRollout(report) {
  // Accuracy from the log's feedback over the last hour (none without labeled rows).
  const accuracy = (q) => (q && q.accuracy !== null && q.accuracy !== undefined)
    ? `${fmt(100 * q.accuracy, 1)} % of ${q.labeled_rows}` : "-";
  const parts = [el("h3", { text: "Rollout" }), table(["version", "role", "requests", "errors", "p50 ms", "p99 ms", "accuracy"],
    report.versions.map((v) => [String(v.version), v.role, String(v.requests ?? "-"), String(v.errors ?? "-"),
      v.latency_ms ? fmt(v.latency_ms.p50) : "-", v.latency_ms ? fmt(v.latency_ms.p99) : "-", accuracy(v.quality)]))];
  const c = report.shadow_comparison;
  if (c) {
    const agreement = c.agreement === null || c.agreement === undefined ? "-" : `${fmt(100 * c.agreement, 1)} %`;
    parts.push(el("p", { "data-testid": "shadow", text: `shadow: ${c.sent} copies, ${c.agreed} agreed, ${c.disagreed} disagreed, ${c.failed} failed, ${c.dropped} dropped — agreement ${agreement}` }));
  }
  return parts;
}

function renderQuality(report) {
  const buckets = (report.buckets || []).filter((b) => b.requests > 0);
  if (!buckets.length) return el("p", { class: "muted", text: "No predictions in this window." });
  const points = buckets.map((b) => ({ accuracy: b.accuracy === null || b.accuracy === undefined ? null : 100 * b.accuracy, error_pct: 100 * b.error_rate }));
  const labeled = buckets.reduce((n, b) => n + b.labeled_rows, 0);
  return el("div", { class: "charts" },
    lineChart("accuracy", points, [{ key: "accuracy", name: "accuracy", color: "#15803d" }], `% of ${labeled} rows with feedback`, 600),
    lineChart("errors", points, [{ key: "error_pct", name: "error rate", color: "#b91c1c" }], "%", 600));
}

// ---------- routing and refresh ----------

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "m" && parts[1]) return { model: parts[1], tab: parts[2] || "overview" };
  return { model: null, tab: "overview" };
}

const TABS = [["overview", "Overview"], ["live", "Live"], ["try", "Try it"], ["records", "Records"]];

function render(full) {
  renderNav();
  const detail = document.getElementById("detail");
  const { model, tab } = state.route;
  if (!model) { detail.replaceChildren(...renderHome()); return; }
  const m = state.models.find((x) => x.name === model);
  if (!m) { detail.replaceChildren(el("div", { class: "error", text: `No model '${model}'.` })); return; }
  if (!full && (tab === "try" || tab === "records")) return; // keep forms and results as they are
  const head = el("h2", {}, el("span", { text: m.name }), el("span", { class: m.state === "READY" ? "dot" : "dot bad" }),
    el("span", { class: "tag", text: m.kind }), el("span", { class: "muted", text: m.state }));
  const tabs = el("div", { class: "tabs" }, TABS.map(([id, label]) =>
    el("a", { href: `#/m/${encodeURIComponent(m.name)}/${id}`, class: id === tab ? "active" : "", "data-tab": id, text: label })));
  const body = { overview: renderOverview, live: renderLive, try: renderTry, records: renderRecords }[tab] || renderOverview;
  detail.replaceChildren(head, tabs, ...body(m));
}

async function refreshLive() {
  try {
    const doc = await api("/v1/dashboard/live");
    state.live = doc.models;
    state.interval = doc.interval_s;
    document.getElementById("live-status").textContent = `live · every ${doc.interval_s} s`;
    render(false);
  } catch (e) {
    document.getElementById("live-status").textContent = "live: " + e.message;
  }
}

async function start() {
  state.route = parseRoute();
  try {
    await loadModels();
  } catch (e) {
    document.getElementById("detail").replaceChildren(errorBox(e));
    return;
  }
  render(true);
  await refreshLive();
  clearInterval(state.timer);
  state.timer = setInterval(refreshLive, Math.max(1000, state.interval * 1000));
}

window.addEventListener("hashchange", () => { state.route = parseRoute(); render(true); });
document.getElementById("token-button").addEventListener("click", () => askToken("Bearer token for this server:"));
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("kiln-token", document.getElementById("token-input").value.trim());
  document.getElementById("token-dialog").hidden = true;
  start();
});
document.getElementById("token-clear").addEventListener("click", () => {
  sessionStorage.removeItem("kiln-token");
  document.getElementById("token-dialog").hidden = true;
});
start();
// Models load and unload while the page is open: refresh the list every 15 s.
setInterval(async () => { try { await loadModels(); render(false); } catch (_) { /* shown on the next action */ } }, 15000);
