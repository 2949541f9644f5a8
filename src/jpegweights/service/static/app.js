// The jpegweights page: everything comes from this server's own API (relative URLs, so it also
// works under a path prefix). No library, no build step. Every failure ends as a message on the
// page, in the section it concerns.
"use strict";

const $ = (id) => document.getElementById(id);
const QUALITIES = [1, 5, 10, 20, 30, 50, 75, 90, 95, 100]; // slider stops, with those a report measured
const state = { token: sessionStorage.getItem("jpegweights-token"), models: [], gallery: { model: null, quality: null, tensors: [], page: 0, seq: 0 } };

class ApiError extends Error {}

async function api(path, { json, form } = {}) {
  const method = json !== undefined || form ? "POST" : "GET";
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body });
  } catch {
    throw new ApiError(`cannot reach the server at ${location.host}: is it running?`);
  }
  if (r.status === 401) {
    $("token-form").hidden = false;
    throw new ApiError("this server needs a bearer token: enter it at the top of the page");
  }
  if (!r.ok) {
    let detail = r.statusText;
    try {
      const j = await r.json();
      detail = j.detail || j.error || detail;
    } catch { /* not JSON: the status text says enough */ }
    throw new ApiError(`${r.status}: ${detail}`);
  }
  return r;
}

function show(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const int = (n) => Math.round(n).toLocaleString("en-US");
function bytes(n) {
  if (n < 1024) return `${int(n)} B`;
  if (n < 1024 * 1024) return `${int(n)} B (${(n / 1024).toFixed(1)} KiB)`;
  return `${int(n)} B (${(n / 1024 / 1024).toFixed(1)} MiB)`;
}
const ratio = (big, small) => `${(big / small).toFixed(1)}×`;

function fidelity(report, q) {
  if (!report || !report.metric) return "no fidelity report for this model";
  const r = report.qualities[String(q)];
  if (!r) return `fidelity not measured at q${q} (measured: ${Object.keys(report.qualities).map((k) => "q" + k).join(", ")})`;
  if (report.metric === "accuracy") {
    const drop = report.float == null ? "" : `, ${((r.value - report.float) * 100).toFixed(2)} points against float ${(report.float * 100).toFixed(2)}%`;
    return `test accuracy ${(r.value * 100).toFixed(2)}%${drop}`;
  }
  if (report.metric === "kl") return `mean KL ${r.value.toFixed(4)} against the float model's outputs`;
  return `mean cosine ${r.value.toFixed(5)} against the float model's embeddings`;
}

// ------------------------------------------------------------------ models

async function loadModels() {
  let listing;
  try {
    listing = await (await api("models")).json();
  } catch (e) {
    show("models-message", `models: ${e.message}`);
    show("g-message", "the gallery needs the list of models: see the message above");
    return;
  }
  show("models-message", Object.keys(listing.failed).length ? `not loaded: ${Object.entries(listing.failed).map(([k, v]) => `${k} (${v})`).join("; ")}` : "");
  state.models = listing.models;
  const body = $("models-table").tBodies[0];
  body.replaceChildren();
  for (const m of listing.models) {
    const report = m.fidelity || {};
    const perQuality = report.metric
      ? `${report.metric}: ` + Object.entries(report.qualities).map(([q, r]) => `q${q} ${(r.bytes / 1024).toFixed(1)} KiB ${report.metric === "accuracy" ? (r.value * 100).toFixed(2) + "%" : r.value.toFixed(4)}`).join(" · ")
      : "no report";
    body.append(el("tr", {},
      el("td", {}, m.name + (m.name === listing.default ? " (default)" : "")),
      el("td", {}, m.handler),
      el("td", {}, m.architecture),
      el("td", { class: "num" }, int(m.parameters)),
      el("td", { class: "num" }, bytes(m.uncompressed_bytes)),
      el("td", { class: "num" }, bytes(m.resident_weight_bytes) + (m.compressed_domain && m.compressed_domain.layers ? `, ${m.compressed_domain.layers} layer${m.compressed_domain.layers > 1 ? "s" : ""} as JPEG coefficients` : "")),
      el("td", { class: "num" }, `${bytes(m.package_bytes)} at q${m.quality}, ${ratio(m.uncompressed_bytes, m.package_bytes)} smaller`),
      el("td", { class: "per-quality" }, perQuality)));
  }
  fillSelect($("g-model"), listing.models, listing.default);
  setupTryIt(listing);
  if (listing.models.length) await galleryModel($("g-model").value);
  else show("g-message", "no model is loaded");
}

function fillSelect(select, models, preferred) {
  select.replaceChildren(...models.map((m) => el("option", { value: m.name }, m.name)));
  if (models.some((m) => m.name === preferred)) select.value = preferred;
}

// ------------------------------------------------------------------ gallery

function model(name) { return state.models.find((m) => m.name === name); }

async function galleryModel(name) {
  const m = model(name);
  const g = state.gallery;
  g.model = name;
  const measured = m.fidelity && m.fidelity.qualities ? Object.keys(m.fidelity.qualities).map(Number) : [];
  g.stops = m.other_qualities ? [...new Set([...QUALITIES, ...measured, m.quality])].sort((a, b) => a - b) : [m.quality];
  const slider = $("g-quality");
  slider.max = g.stops.length - 1;
  slider.value = g.stops.indexOf(m.quality);
  slider.disabled = g.stops.length === 1;
  slider.title = slider.disabled ? "the store has no float weights for this model: only its package's quality" : "";
  g.tensorName = null;
  await galleryQuality();
}

async function galleryQuality() {
  const g = state.gallery;
  const q = g.stops[Number($("g-quality").value)];
  $("g-quality-out").value = `q${q}`;
  const seq = ++g.seq; // answers to an older slider position are dropped
  show("g-message", "");
  $("g-figures").textContent = `q${q}: loading (a quality not asked for before is encoded first)…`;
  let listing;
  try {
    listing = await (await api(`models/${encodeURIComponent(g.model)}/tensors?quality=${q}`)).json();
  } catch (e) {
    if (seq === g.seq) { $("g-figures").textContent = ""; show("g-message", `gallery: ${e.message}`); }
    return;
  }
  if (seq !== g.seq) return;
  g.quality = q;
  g.listing = listing;
  const m = model(g.model);
  $("g-figures").textContent = `q${q}: package ${bytes(listing.package_bytes)}, ${ratio(listing.float32_bytes, listing.package_bytes)} smaller than float32 (${bytes(listing.float32_bytes)}); ${fidelity(m.fidelity, q)}`;
  const select = $("g-tensor");
  const previous = g.tensorName;
  select.replaceChildren(...listing.tensors.map((t) => el("option", { value: t.name }, `${t.name} [${t.shape.join("×")}] ${t.coding}`)));
  const first = listing.tensors.find((t) => t.coding === "jpeg") || listing.tensors[0];
  select.value = previous && listing.tensors.some((t) => t.name === previous) ? previous : first ? first.name : "";
  await galleryTensor(previous === select.value ? g.page : 0);
}

async function galleryTensor(page = 0) {
  const g = state.gallery;
  const t = g.listing.tensors.find((x) => x.name === $("g-tensor").value);
  if (!t) return;
  g.tensorName = t.name;
  g.page = Math.min(page, t.view.pages - 1);
  $("g-page").textContent = `page ${g.page + 1} of ${t.view.pages}`;
  $("g-prev").disabled = g.page === 0;
  $("g-next").disabled = g.page >= t.view.pages - 1;
  const err = t.relative_error == null ? "no float weights to compare" : `relative error ${(t.relative_error * 100).toFixed(2)}%`;
  const how = t.coding === "jpeg" ? `JPEG q${t.quality}` : `${t.coding} (not JPEG: the quality does not change it)`;
  const shown = t.view.layout === "tiles" ? `each row a ${t.view.tile}×${t.view.tile} tile` : `windows of ${t.view.window}×${t.view.window} values`;
  $("g-tensor-figures").textContent = `${t.name}: ${how}, ${bytes(t.bytes)}, ${err}; drawn with ${shown}`;
  $("g-coded-caption").textContent = `coded (${how})`;
  const kinds = g.listing.original ? ["original", "coded", "difference"] : ["coded"];
  $("g-original-fig").hidden = $("g-difference-fig").hidden = !g.listing.original;
  if (!g.listing.original) show("g-message", `${g.listing.original_unavailable || "the store has no float weights for this model"}: only the coded picture is shown`);
  const seq = g.seq;
  const base = `models/${encodeURIComponent(g.model)}/tensors/${encodeURIComponent(t.name)}.png?quality=${g.quality}&page=${g.page}`;
  try {
    const blobs = await Promise.all(kinds.map(async (k) => (await api(`${base}&kind=${k}`)).blob()));
    if (seq !== g.seq) return;
    kinds.forEach((k, i) => {
      const img = $(`g-${k}`);
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(blobs[i]);
      img.dataset.shown = `${t.name} q${g.quality} page ${g.page + 1}`; // what the picture is (tests wait on it)
    });
  } catch (e) {
    if (seq === g.seq) show("g-message", `pictures: ${e.message}`);
  }
}

function galleryPage(step) {
  galleryTensor(state.gallery.page + step);
}

// ------------------------------------------------------------------ try it

function setupTryIt(listing) {
  const kinds = {
    digit: listing.models.filter((m) => m.handler === "image-classification" && m.input_shape && m.input_shape[0] === 1),
    photo: listing.models.filter((m) => m.handler === "image-classification" && m.input_shape && m.input_shape[0] === 3),
    text: listing.models.filter((m) => m.handler === "text-embedding"),
  };
  for (const [kind, models] of Object.entries(kinds)) {
    fillSelect($(`${kind}-model`), models, listing.default);
    const result = $(`${kind}-result`);
    result.replaceChildren();
    if (!models.length) result.append(el("p", { class: "message" }, "no model of this kind is loaded on this server"));
    for (const b of $(`${kind}-card`).querySelectorAll("button, input, select")) b.disabled = !models.length;
  }
}

function showError(result, message) {
  result.replaceChildren(el("p", { class: "message" }, message));
}

function topK(result, answer, ms) {
  const rows = answer.top_k[0].map((c) => el("li", {}, `${c.label} `, el("span", { class: "num" }, (c.score * 100).toFixed(1) + "%"), el("span", { class: "bar", style: `width:${Math.max(1, c.score * 120)}px` })));
  result.replaceChildren(el("p", {}, el("strong", { class: "top1" }, answer.labels[0]), el("span", { class: "latency" }, ` ${ms.toFixed(0)} ms round trip`)), el("ol", {}, ...rows));
}

async function timed(fn) {
  const t0 = performance.now();
  const answer = await fn();
  return [answer, performance.now() - t0];
}

// A digit as MNIST has them: the ink's bounding box scaled to 20 pixels on its long side, in a
// 28×28 field with its centre of mass at the centre; white on black, 0..255.
function digitPixels(canvas) {
  const w = canvas.width, h = canvas.height;
  const data = canvas.getContext("2d").getImageData(0, 0, w, h).data;
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (data[(y * w + x) * 4] > 30) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  if (x1 < 0) return null;
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1, s = 20 / Math.max(bw, bh);
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  const c = small.getContext("2d", { willReadFrequently: true });
  c.imageSmoothingEnabled = true;
  c.imageSmoothingQuality = "high";
  const place = (dx, dy) => {
    c.fillStyle = "#000";
    c.fillRect(0, 0, 28, 28);
    c.drawImage(canvas, x0, y0, bw, bh, (28 - bw * s) / 2 + dx, (28 - bh * s) / 2 + dy, bw * s, bh * s);
    return c.getImageData(0, 0, 28, 28).data;
  };
  let px = place(0, 0), m = 0, cx = 0, cy = 0;
  for (let i = 0; i < 784; i++) { const v = px[i * 4]; m += v; cx += v * (i % 28); cy += v * Math.floor(i / 28); }
  px = place(Math.round(13.5 - cx / m), Math.round(13.5 - cy / m));
  return Array.from({ length: 784 }, (_, i) => px[i * 4]);
}

function setupDigit() {
  const canvas = $("digit");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let last = null;
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; };
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); last = at(e); });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 20; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke();
    last = p;
  });
  const up = () => { last = null; };
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  $("digit-clear").addEventListener("click", () => { clear(); $("digit-result").replaceChildren(); });
  $("digit-predict").addEventListener("click", async () => {
    const result = $("digit-result");
    const pixels = digitPixels(canvas);
    if (!pixels) return showError(result, "the canvas is empty: draw a digit first");
    const name = $("digit-model").value;
    const here = $("digit-local").checked ? await localAnswer(name, pixels) : null;
    try {
      const [answer, ms] = await timed(async () => (await api(`predict?model=${encodeURIComponent(name)}`, { json: { inputs: [pixels], top_k: 3 } })).json());
      topK(result, answer, ms);
    } catch (e) {
      showError(result, e.message);
    }
    if (here) result.append(here);
  });
}

// Models this page runs itself ("run here"): the package fetched once (the browser's cache
// revalidates it by its ETag), checked against its SHA-256, its atlases decoded by the
// browser's JPEG decoder, the forward pass in plain JavaScript (static/jpw.js).
const local = new Map(); // model name -> Promise of {predict, labels, bytes, ms}

function loadLocal(name) {
  if (!local.has(name)) {
    const loading = (async () => {
      const t0 = performance.now();
      const buffer = await (await api(`weights?model=${encodeURIComponent(name)}`)).arrayBuffer();
      const { manifest, state } = await JPW.read(buffer);
      const labels = manifest.handler?.config?.labels;
      return { predict: JPW.sequential(manifest, state), labels, bytes: buffer.byteLength, ms: performance.now() - t0 };
    })();
    local.set(name, loading);
    loading.catch(() => local.delete(name)); // a failure is reported, and the next click tries again
  }
  return local.get(name);
}

// The local answer as a line of the result, and the status line: bytes fetched and the time from
// click to the first local answer, or why the page cannot run this model (the server answers).
async function localAnswer(name, pixels) {
  const status = $("digit-local-status");
  const first = !local.has(name);
  try {
    const [probs, ms] = await timed(async () => (await loadLocal(name)).predict(pixels));
    const m = await loadLocal(name);
    let best = 0;
    probs.forEach((p, i) => { if (p > probs[best]) best = i; });
    if (first) status.textContent = `${name}: ${bytes(m.bytes)} fetched once, SHA-256 checked, decoded by this browser; ${ms.toFixed(0)} ms from click to the first local answer. No request per prediction.`;
    const label = m.labels ? m.labels[best] : String(best);
    return el("p", { class: "local-answer" }, "this browser: ", el("strong", {}, label), ` ${(probs[best] * 100).toFixed(1)}%, ${ms.toFixed(1)} ms, no request`);
  } catch (e) {
    status.textContent = `${name} cannot run in this browser (${e.message}); the server answers`;
    return null;
  }
}

window.jpwLocal = { load: loadLocal, predict: async (name, pixels) => (await loadLocal(name)).predict(pixels) };

// The first bytes of the formats the server reads: a file that is none of them is refused here,
// with a message, before it is sent.
async function imageFormat(file) {
  const b = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if ([0x89, 0x50, 0x4e, 0x47].every((v, i) => b[i] === v)) return "PNG";
  if (String.fromCharCode(...b.slice(0, 4)) === "RIFF" && String.fromCharCode(...b.slice(8, 12)) === "WEBP") return "WebP";
  return null;
}

async function sendPhoto(file) {
  const result = $("photo-result");
  const preview = $("photo-preview");
  if (!file) return;
  if (!(await imageFormat(file))) {
    preview.hidden = true;
    return showError(result, `"${file.name}" is not a JPEG, PNG or WebP image: drop a photo`);
  }
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  result.replaceChildren(el("p", { class: "latency" }, "classifying…"));
  const form = new FormData();
  form.append("file", file, file.name);
  const name = $("photo-model").value;
  try {
    const [answer, ms] = await timed(async () => (await api(`predict?model=${encodeURIComponent(name)}`, { form })).json());
    topK(result, answer, ms);
  } catch (e) {
    showError(result, e.message);
  }
}

function setupPhoto() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = e.dataTransfer ? e.dataTransfer.files : [];
    if (!files.length) return showError($("photo-result"), "nothing was dropped that is a file");
    sendPhoto(files[0]);
  });
  $("photo-file").addEventListener("change", (e) => sendPhoto(e.target.files[0]));
}

function setupText() {
  $("text-predict").addEventListener("click", async () => {
    const result = $("text-result");
    const texts = $("sentences").value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (texts.length < 2) return showError(result, "type at least two sentences, one per line");
    if (texts.length > 32) return showError(result, "at most 32 sentences at a time");
    const name = $("text-model").value;
    try {
      const [answer, ms] = await timed(async () => (await api(`predict?model=${encodeURIComponent(name)}`, { json: { text: texts } })).json());
      const v = answer.embeddings;
      const norm = v.map((a) => Math.hypot(...a));
      const cos = (i, j) => v[i].reduce((s, x, k) => s + x * v[j][k], 0) / (norm[i] * norm[j]);
      const head = el("tr", {}, el("th", {}, ""), ...texts.map((_, j) => el("th", { class: "num" }, String(j + 1))));
      const rows = texts.map((t, i) => el("tr", {}, el("td", {}, `${i + 1}. ${t.slice(0, 40)}`), ...texts.map((_, j) => {
        const c = cos(i, j);
        return el("td", { class: "num", style: `background:rgba(36,86,166,${Math.max(0, c) * 0.5})` }, c.toFixed(3));
      })));
      result.replaceChildren(el("p", { class: "latency" }, `cosine similarity of the ${v[0].length}-dimensional embeddings; ${ms.toFixed(0)} ms round trip`), el("table", { class: "similarities" }, head, ...rows));
    } catch (e) {
      showError(result, e.message);
    }
  });
}

// ------------------------------------------------------------------ live

const live = { last: null, history: [] };
const inference = (route) => route === "/predict" || route.endsWith("/infer");

function sumRoutes(stats) {
  const out = { requests: 0, seconds: 0, buckets: {} };
  for (const [route, r] of Object.entries(stats.routes)) {
    if (!inference(route)) continue;
    out.requests += r.requests;
    out.seconds += r.seconds;
    for (const [le, n] of Object.entries(r.buckets)) out.buckets[le] = (out.buckets[le] || 0) + n;
  }
  out.passes = Object.values(stats.models).reduce((s, m) => s + m.passes, 0);
  out.samples = Object.values(stats.models).reduce((s, m) => s + m.samples, 0);
  return out;
}

const ms = (s) => (s * 1e3 < 10 ? (s * 1e3).toFixed(2) : (s * 1e3).toFixed(0)) + " ms";

async function pollLive() {
  const status = $("status");
  let stats;
  try {
    stats = await (await api("stats")).json();
  } catch (e) {
    show("live-message", `live figures: ${e.message}`);
    status.textContent = "unreachable";
    status.className = "badge bad";
    return;
  }
  show("live-message", "");
  status.textContent = "live";
  status.className = "badge ok";
  const now = { time: stats.time, ...sumRoutes(stats) };
  $("live-total").textContent = int(now.requests);
  const before = live.last;
  live.last = now;
  if (!before) return;
  const dt = now.time - before.time, n = now.requests - before.requests;
  const rps = dt > 0 ? n / dt : 0;
  $("live-rps").textContent = rps.toFixed(1);
  $("live-latency").textContent = n > 0 ? ms((now.seconds - before.seconds) / n) : "–";
  if (n > 0) {
    const edges = Object.keys(now.buckets).filter((le) => le !== "+Inf").sort((a, b) => a - b);
    const le = edges.find((e) => now.buckets[e] - (before.buckets[e] || 0) >= 0.99 * n);
    $("live-p99").textContent = le ? `≤ ${ms(Number(le))}` : "> 10 s";
  } else {
    $("live-p99").textContent = "–";
  }
  const passes = now.passes - before.passes;
  $("live-batch").textContent = passes > 0 ? ((now.samples - before.samples) / passes).toFixed(1) : "–";
  live.history.push(rps);
  if (live.history.length > 60) live.history.shift();
  drawChart();
}

function drawChart() {
  const c = $("live-chart"), ctx = c.getContext("2d"), h = live.history;
  ctx.clearRect(0, 0, c.width, c.height);
  const top = Math.max(1, ...h);
  ctx.fillStyle = "#666";
  ctx.font = "11px system-ui";
  ctx.fillText(`${top.toFixed(1)} req/s`, 4, 12);
  ctx.strokeStyle = "#2456a6";
  ctx.lineWidth = 2;
  ctx.beginPath();
  h.forEach((v, i) => {
    const x = c.width - (h.length - 1 - i) * (c.width / 59), y = c.height - 4 - (v / top) * (c.height - 20);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
}

// ------------------------------------------------------------------ start

function start() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim() || null;
    if (state.token) sessionStorage.setItem("jpegweights-token", state.token);
    $("token-form").hidden = true;
    loadModels();
  });
  $("g-model").addEventListener("change", (e) => galleryModel(e.target.value));
  $("g-quality").addEventListener("input", () => { if (state.gallery.stops) $("g-quality-out").value = `q${state.gallery.stops[Number($("g-quality").value)]}`; });
  $("g-quality").addEventListener("change", galleryQuality);
  $("g-tensor").addEventListener("change", () => galleryTensor(0));
  $("g-prev").addEventListener("click", () => galleryPage(-1));
  $("g-next").addEventListener("click", () => galleryPage(1));
  setupDigit();
  setupPhoto();
  setupText();
  loadModels();
  pollLive();
  setInterval(pollLive, 3000);
}

start();
