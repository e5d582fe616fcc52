// The w2v web page: plain browser JavaScript over the service's JSON API, no build step and
// nothing loaded from elsewhere. Progress arrives as Server-Sent Events read through fetch()
// rather than EventSource, because EventSource cannot send the X-API-Key header.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const KEY_STORAGE = "w2v.apiKey";
  const ACTIVE = new Set(["queued", "running"]);

  const state = {
    apiKey: localStorage.getItem(KEY_STORAGE) || "",
    model: null, // id of the model that answers queries; null until the list is loaded
    models: [],
    job: null, // the job shown in the progress card
    stream: null, // AbortController of its event stream
    loss: [], // [{x: epochs done, y: loss}]
    evalTarget: null,
    scatter: { words: [], points: [], queryWords: [] }, // kept to redraw on resize
    watchedOnLoad: false,
    keyPrompted: false,
  };

  // ------------------------------------------------------------------ HTTP

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function withKey(headers) {
    const h = new Headers(headers || {});
    if (state.apiKey) h.set("X-API-Key", state.apiKey);
    return h;
  }

  function errorText(status, body) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail
        .map((d) => {
          const where = (d.loc || []).filter((p) => p !== "body" && p !== "query").join(".");
          return where ? `${where}: ${d.msg}` : d.msg;
        })
        .join("; ");
    }
    return `HTTP ${status}`;
  }

  function parseBody(text) {
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }

  function failed(status, body) {
    // Asked once per key: a user who dismisses the dialog is not nagged by every background refresh.
    if (status === 401 && !state.keyPrompted) {
      state.keyPrompted = true;
      askForKey("The service needs an API key for this.");
    }
    return new ApiError(status, errorText(status, body));
  }

  async function api(path, options = {}) {
    const res = await fetch(path, { ...options, headers: withKey(options.headers) });
    const body = parseBody(await res.text());
    if (!res.ok) throw failed(res.status, body);
    return body;
  }

  // XMLHttpRequest rather than fetch: it reports upload progress.
  function postFile(path, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      if (state.apiKey) xhr.setRequestHeader("X-API-Key", state.apiKey);
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
      xhr.onload = () => {
        const body = parseBody(xhr.responseText);
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(failed(xhr.status, body));
      };
      xhr.onerror = () => reject(new Error("the upload failed: network error"));
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }

  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === null || v === undefined || v === "") continue;
      for (const item of Array.isArray(v) ? v : [v]) q.append(k, item);
    }
    return q.toString();
  };

  // ------------------------------------------------------------------ formatting

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  };

  function fmtRate(wordsPerSec) {
    if (wordsPerSec === null || wordsPerSec === undefined) return "–";
    if (wordsPerSec >= 1e6) return `${(wordsPerSec / 1e6).toFixed(2)} M`;
    if (wordsPerSec >= 1e3) return `${(wordsPerSec / 1e3).toFixed(1)} k`;
    return `${Math.round(wordsPerSec)}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const shortId = (id) => (id ? id.slice(0, 8) : "–");

  function setMessage(node, text, kind = "") {
    node.textContent = text || "";
    node.className = `message ${kind}`.trim();
  }

  // ------------------------------------------------------------------ API key and status

  function askForKey(reason) {
    const dialog = $("#key-dialog");
    if (dialog.open) return;
    $("#key-reason").textContent = reason || "This service may require an API key. It is kept in this browser only.";
    $("#key-input").value = state.apiKey;
    dialog.showModal();
  }

  function setupKeyDialog() {
    $("#key-button").addEventListener("click", () => askForKey());
    $("#key-dialog").addEventListener("close", () => {
      if ($("#key-dialog").returnValue !== "save") return;
      state.apiKey = $("#key-input").value.trim();
      state.keyPrompted = false;
      if (state.apiKey) localStorage.setItem(KEY_STORAGE, state.apiKey);
      else localStorage.removeItem(KEY_STORAGE);
      refreshAll();
    });
  }

  async function refreshStatus() {
    const pill = $("#status");
    try {
      const res = await fetch("/readyz");
      const body = parseBody(await res.text());
      const ok = res.ok && body && body.status === "ready";
      pill.textContent = ok ? "ready" : "unavailable";
      pill.className = `pill ${ok ? "ok" : "bad"}`;
      pill.title = body && body.checks ? Object.entries(body.checks).map(([k, v]) => `${k}: ${v}`).join("\n") : "";
    } catch {
      pill.textContent = "offline";
      pill.className = "pill bad";
    }
  }

  // ------------------------------------------------------------------ training

  function trainBody(form) {
    const body = {};
    for (const input of form.querySelectorAll("fieldset.params input, fieldset.params select")) {
      if (input.type === "number") {
        if (input.value === "") continue;
        const n = Number(input.value);
        // Integer fields go as integers: the API refuses 5.0 where it expects 5.
        body[input.name] = input.step === "any" ? n : Math.trunc(n);
      } else {
        body[input.name] = input.value;
      }
    }
    // Subwords shorter than fastText's 3 characters: the shortest n-gram is the longest then.
    if (body.max_n > 0 && body.max_n < 3) body.min_n = body.max_n;
    return body;
  }

  async function submitTraining(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const message = $("#train-message");
    const file = $("#corpus-file").files[0];
    if (!file) {
      setMessage(message, "Choose a corpus file first.", "error");
      return;
    }
    const button = $("#train-button");
    const bar = $("#upload-bar");
    button.disabled = true;
    bar.hidden = false;
    bar.firstElementChild.style.width = "0";
    try {
      const name = $("#train-name").value.trim();
      setMessage(message, `Uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`);
      const corpus = await postFile(`/corpora?${query({ name })}`, file, (f) => {
        bar.firstElementChild.style.width = `${(f * 100).toFixed(1)}%`;
      });
      setMessage(message, `Uploaded: ${fmtInt(corpus.lines)} lines. Queuing the job…`);
      const accepted = await api("/train", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ corpus_id: corpus.id, name: name || null, ...trainBody(form) }),
      });
      setMessage(message, `Job ${shortId(accepted.job_id)} queued on corpus ${shortId(corpus.id)}.`, "ok");
      watchJob(accepted.job_id, name || file.name);
      refreshJobs();
    } catch (err) {
      setMessage(message, err.message, "error");
    } finally {
      button.disabled = false;
      bar.hidden = true;
    }
  }

  function parseEvent(block) {
    const ev = { event: "message", data: null, retry: null };
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") ev.event = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) ev.retry = Number(value);
    }
    if (data.length) ev.data = data.join("\n");
    return ev;
  }

  // Reads GET /jobs/{id}/events until `event: end`; reconnects after a dropped connection.
  async function streamJob(jobId, signal) {
    let retryMs = 2000;
    while (!signal.aborted) {
      try {
        const res = await fetch(`/jobs/${jobId}/events`, { headers: withKey({ Accept: "text/event-stream" }), signal });
        if (!res.ok) throw failed(res.status, parseBody(await res.text()));
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const ev = parseEvent(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (ev.retry !== null) retryMs = ev.retry;
            if (ev.data === null) continue;
            const payload = JSON.parse(ev.data);
            if (ev.event === "error") throw new ApiError(404, payload.detail || "the job disappeared");
            showJob(payload);
            if (ev.event === "end") {
              jobEnded(payload);
              return;
            }
          }
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && err.status < 500) {
          setMessage($("#job-error"), err.message, "error");
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  }

  function watchJob(jobId, label) {
    if (state.stream) state.stream.abort();
    state.stream = new AbortController();
    state.job = { job_id: jobId, name: label || null };
    state.loss = [];
    $("#job-empty").hidden = true;
    $("#job-view").hidden = false;
    $("#job-name").textContent = label || `job ${shortId(jobId)}`;
    $("#job-name").title = jobId;
    setMessage($("#job-error"), "");
    drawLoss();
    streamJob(jobId, state.stream.signal);
  }

  function showJob(job) {
    state.job = job;
    const p = job.progress || {};
    let frac = p.words_total ? Math.min(1, p.words_done / p.words_total) : 0;
    if (job.state === "succeeded") frac = 1;
    const pct = (frac * 100).toFixed(1);
    $("#job-bar").style.width = `${pct}%`;
    $("#job-percent").textContent = `${pct} %`;
    $("#job-progress").setAttribute("aria-valuenow", pct);
    if (job.name) $("#job-name").textContent = job.name;
    const badge = $("#job-state");
    badge.textContent = job.stalled ? "worker lost" : job.state;
    badge.className = `badge ${job.stalled ? "queued" : job.state}`;
    badge.title = job.stalled ? "Its worker stopped: the job goes back on the queue and resumes from its last checkpoint." : "";
    $("#job-epoch").textContent = p.epochs ? `${p.epoch || 0} / ${p.epochs}` : "–";
    $("#job-speed").textContent = fmtRate(p.words_per_sec);
    $("#job-eta").textContent =
      job.state === "running" && p.phase === "indexing"
        ? `indexing neighbours ${p.neighbour_words_done || 0} / ${p.neighbour_words_total || "?"}`
        : job.stalled ? "waiting to resume"
        : job.state === "running" ? fmtDuration(p.eta_s) : job.state === "succeeded" ? "done" : "–";
    // The trainer's closing report can carry no loss (no words since the one before): keep the last known.
    const lastLoss = state.loss.length ? state.loss[state.loss.length - 1].y : null;
    const loss = p.loss === null || p.loss === undefined ? lastLoss : p.loss;
    $("#job-loss").textContent = loss === null ? "–" : loss.toFixed(4);
    $("#job-elapsed").textContent = fmtDuration(p.elapsed_s);
    $("#cancel-button").hidden = !ACTIVE.has(job.state) || job.cancel_requested;
    if (job.error) setMessage($("#job-error"), job.error, "error");
    if (p.loss !== null && p.loss !== undefined && p.words_total) {
      const x = frac * (p.epochs || 1);
      const last = state.loss[state.loss.length - 1];
      if (!last || x > last.x) {
        state.loss.push({ x, y: p.loss });
        drawLoss();
      }
    }
  }

  async function jobEnded(job) {
    refreshJobs();
    if (job.state === "succeeded" && job.model_id) {
      state.model = job.model_id;
      await refreshModels();
      setMessage($("#models-message"), `Model ${shortId(job.model_id)} is ready and selected for queries.`, "ok");
    }
  }

  async function cancelJob() {
    if (!state.job) return;
    try {
      showJob(await api(`/jobs/${state.job.job_id}/cancel`, { method: "POST" }));
    } catch (err) {
      setMessage($("#job-error"), err.message, "error");
    }
  }

  async function refreshJobs() {
    const tbody = $("#jobs-table tbody");
    let jobs;
    try {
      jobs = await api("/jobs?limit=6");
    } catch (err) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, err.message)));
      return;
    }
    if (!jobs.length) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No jobs yet.")));
      return;
    }
    // Opening the page while a job trains shows that job's progress straight away.
    if (!state.watchedOnLoad && !state.job) {
      const active = jobs.find((job) => ACTIVE.has(job.state));
      if (active) watchJob(active.job_id, active.name);
    }
    state.watchedOnLoad = true;
    tbody.replaceChildren(
      ...jobs.map((job) => {
        const p = job.progress || {};
        const frac = job.state === "succeeded" ? 1 : p.words_total ? p.words_done / p.words_total : 0;
        return el(
          "tr",
          { dataset: { jobId: job.job_id } },
          el("td", { title: job.job_id }, job.name || el("span", { class: "mono" }, shortId(job.job_id))),
          el("td", {}, el("span", { class: `badge ${job.state}` }, job.state)),
          el("td", { class: "num" }, `${(frac * 100).toFixed(0)} %`),
          el("td", {}, fmtTime(job.created_at)),
          el("td", { class: "num" }, el("button", { type: "button", class: "small ghost", onclick: () => watchJob(job.job_id, job.name) }, "Watch")),
        );
      }),
    );
  }

  // ------------------------------------------------------------------ charts

  // A canvas sized to its CSS box in device pixels, with drawing units in CSS pixels.
  function prepareCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, w, h };
  }

  function niceTicks(lo, hi, count) {
    const span = hi - lo || Math.abs(hi) || 1;
    const step0 = span / count;
    const mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
    let decimals = 0;
    while (decimals < 6 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
    return { ticks, label: (t) => t.toFixed(decimals) };
  }

  function drawLoss() {
    const canvas = $("#loss-chart");
    const { ctx, w, h } = prepareCanvas(canvas);
    const pts = state.loss;
    canvas.dataset.points = String(pts.length);
    const pad = { l: 52, r: 14, t: 14, b: 28 };
    const epochs = (state.job && state.job.progress && state.job.progress.epochs) || Math.max(1, ...pts.map((p) => p.x));
    if (pts.length === 0) {
      ctx.fillStyle = "#98a2b3";
      ctx.textAlign = "center";
      ctx.fillText("The loss curve appears as training reports progress.", w / 2, h / 2);
      return;
    }
    let lo = Math.min(...pts.map((p) => p.y));
    let hi = Math.max(...pts.map((p) => p.y));
    if (hi - lo < 1e-6) {
      lo -= 0.05;
      hi += 0.05;
    }
    const margin = (hi - lo) * 0.08;
    lo -= margin;
    hi += margin;
    const X = (x) => pad.l + (x / epochs) * (w - pad.l - pad.r);
    const Y = (y) => pad.t + (1 - (y - lo) / (hi - lo)) * (h - pad.t - pad.b);

    ctx.strokeStyle = "#eef1f5";
    ctx.fillStyle = "#667085";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yTicks = niceTicks(lo, hi, 4);
    for (const t of yTicks.ticks) {
      ctx.beginPath();
      ctx.moveTo(pad.l, Y(t));
      ctx.lineTo(w - pad.r, Y(t));
      ctx.stroke();
      ctx.fillText(yTicks.label(t), pad.l - 6, Y(t));
    }
    ctx.textBaseline = "top";
    ctx.fillText("epoch", pad.l - 6, h - pad.b + 6);
    ctx.textAlign = "center";
    const xTicks = niceTicks(0, epochs, Math.min(epochs, 10));
    for (const t of xTicks.ticks) ctx.fillText(xTicks.label(t), X(t), h - pad.b + 6);

    const gradient = ctx.createLinearGradient(0, pad.t, 0, h - pad.b);
    gradient.addColorStop(0, "rgba(79, 70, 229, 0.18)");
    gradient.addColorStop(1, "rgba(79, 70, 229, 0)");
    ctx.beginPath();
    ctx.moveTo(X(pts[0].x), h - pad.b);
    for (const p of pts) ctx.lineTo(X(p.x), Y(p.y));
    ctx.lineTo(X(pts[pts.length - 1].x), h - pad.b);
    ctx.closePath();
    ctx.fillStyle = gradient;
    ctx.fill();

    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(X(p.x), Y(p.y)) : ctx.moveTo(X(p.x), Y(p.y))));
    ctx.strokeStyle = "#4f46e5";
    ctx.lineWidth = 2;
    ctx.stroke();
    const last = pts[pts.length - 1];
    ctx.fillStyle = "#4f46e5";
    ctx.beginPath();
    ctx.arc(X(last.x), Y(last.y), 3.5, 0, 2 * Math.PI);
    ctx.fill();
    // Top right: a falling curve leaves that corner empty.
    ctx.fillStyle = "#1d2433";
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(`loss ${last.y.toFixed(4)}`, w - pad.r - 4, pad.t + 2);
  }

  // Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: exact enough and
  // plenty fast for the few dozen points a query returns.
  function symmetricEigen(matrix) {
    const n = matrix.length;
    const a = matrix.map((row) => Float64Array.from(row));
    const v = Array.from({ length: n }, (_, i) => Float64Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)));
    let scale = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) scale += a[i][j] * a[i][j];
    for (let sweep = 0; sweep < 100; sweep++) {
      let off = 0;
      for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] * a[p][q];
      if (off <= 1e-24 * scale) break;
      for (let p = 0; p < n; p++) {
        for (let q = p + 1; q < n; q++) {
          if (a[p][q] === 0) continue;
          const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
          const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
          const c = 1 / Math.sqrt(t * t + 1);
          const s = t * c;
          for (let k = 0; k < n; k++) {
            const akp = a[k][p];
            const akq = a[k][q];
            a[k][p] = c * akp - s * akq;
            a[k][q] = s * akp + c * akq;
          }
          for (let k = 0; k < n; k++) {
            const apk = a[p][k];
            const aqk = a[q][k];
            a[p][k] = c * apk - s * aqk;
            a[q][k] = s * apk + c * aqk;
          }
          for (let k = 0; k < n; k++) {
            const vkp = v[k][p];
            const vkq = v[k][q];
            v[k][p] = c * vkp - s * vkq;
            v[k][q] = s * vkp + c * vkq;
          }
        }
      }
    }
    return { values: a.map((row, i) => row[i]), vectors: v };
  }

  // The first two principal-component scores of each row (rows centred; sign fixed so the
  // largest-magnitude score of each component is positive, making redraws stable).
  function pca2(rows) {
    const n = rows.length;
    const d = rows[0].length;
    const mean = new Float64Array(d);
    for (const r of rows) for (let j = 0; j < d; j++) mean[j] += r[j] / n;
    const x = rows.map((r) => Float64Array.from(r, (value, j) => value - mean[j]));
    const gram = x.map((ri) => x.map((rj) => ri.reduce((s, value, k) => s + value * rj[k], 0)));
    const { values, vectors } = symmetricEigen(gram);
    const order = values.map((value, i) => [value, i]).sort((p, q) => q[0] - p[0]).map(([, i]) => i);
    const components = order.slice(0, 2).map((c) => {
      const scale = Math.sqrt(Math.max(values[c], 0));
      const scores = vectors.map((row) => row[c] * scale);
      const pivot = scores.reduce((best, value) => (Math.abs(value) > Math.abs(best) ? value : best), 0);
      return pivot < 0 ? scores.map((value) => -value) : scores;
    });
    while (components.length < 2) components.push(new Array(n).fill(0));
    return rows.map((_, i) => [components[0][i], components[1][i]]);
  }

  function drawScatter(words, points, queryWords) {
    state.scatter = { words, points, queryWords };
    const canvas = $("#scatter");
    const { ctx, w, h } = prepareCanvas(canvas);
    canvas.dataset.points = String(points.length);
    if (!points.length) {
      ctx.fillStyle = "#98a2b3";
      ctx.textAlign = "center";
      ctx.fillText("Run a query to see its words in two dimensions.", w / 2, h / 2);
      return;
    }
    const pad = 46;
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys)) || 1;
    const cx = (Math.max(...xs) + Math.min(...xs)) / 2;
    const cy = (Math.max(...ys) + Math.min(...ys)) / 2;
    const unit = Math.min(w - 2 * pad, h - 2 * pad) / span; // same scale on both axes: distances stay honest
    const X = (x) => w / 2 + (x - cx) * unit;
    const Y = (y) => h / 2 - (y - cy) * unit;

    ctx.strokeStyle = "#eef1f5";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(pad / 2, Y(0));
    ctx.lineTo(w - pad / 2, Y(0));
    ctx.moveTo(X(0), pad / 2);
    ctx.lineTo(X(0), h - pad / 2);
    ctx.stroke();
    ctx.fillStyle = "#98a2b3";
    ctx.textAlign = "right";
    ctx.fillText("PC 1", w - 8, Y(0) - 6);
    ctx.textAlign = "left";
    ctx.fillText("PC 2", X(0) + 6, 14);

    const isQuery = words.map((word) => queryWords.includes(word));
    const anchor = points.findIndex((_, i) => isQuery[i]);
    if (anchor >= 0) {
      ctx.strokeStyle = "rgba(79, 70, 229, 0.18)";
      for (let i = 0; i < points.length; i++) {
        if (isQuery[i]) continue;
        ctx.beginPath();
        ctx.moveTo(X(points[anchor][0]), Y(points[anchor][1]));
        ctx.lineTo(X(points[i][0]), Y(points[i][1]));
        ctx.stroke();
      }
    }
    const screen = points.map((p) => [X(p[0]), Y(p[1])]);
    screen.forEach(([px, py], i) => {
      ctx.fillStyle = isQuery[i] ? "#4f46e5" : "#0e9f6e";
      ctx.beginPath();
      ctx.arc(px, py, isQuery[i] ? 6 : 4.5, 0, 2 * Math.PI);
      ctx.fill();
    });
    // Labels go right, left, above or below their dot, whichever first overlaps no other
    // label or dot; query words are placed first so they get the best spot.
    const taken = screen.map(([px, py]) => ({ x0: px - 5, y0: py - 5, x1: px + 5, y1: py + 5 }));
    const clashes = (b) => b.x0 < 2 || b.x1 > w - 2 || b.y0 < 2 || b.y1 > h - 2 || taken.some((o) => b.x0 < o.x1 && b.x1 > o.x0 && b.y0 < o.y1 && b.y1 > o.y0);
    const order = words.map((_, i) => i).sort((a, b) => isQuery[b] - isQuery[a]);
    ctx.textBaseline = "middle";
    for (const i of order) {
      const [px, py] = screen[i];
      ctx.font = isQuery[i] ? "bold 13px system-ui, sans-serif" : "12px system-ui, sans-serif";
      const tw = ctx.measureText(words[i]).width;
      const spots = [
        { x: px + 9, y: py, align: "left", box: { x0: px + 8, y0: py - 8, x1: px + 10 + tw, y1: py + 8 } },
        { x: px - 9, y: py, align: "right", box: { x0: px - 10 - tw, y0: py - 8, x1: px - 8, y1: py + 8 } },
        { x: px, y: py - 14, align: "center", box: { x0: px - tw / 2 - 1, y0: py - 22, x1: px + tw / 2 + 1, y1: py - 6 } },
        { x: px, y: py + 14, align: "center", box: { x0: px - tw / 2 - 1, y0: py + 6, x1: px + tw / 2 + 1, y1: py + 22 } },
      ];
      const spot = spots.find((c) => !clashes(c.box)) || spots[px < w - tw - 20 ? 0 : 1];
      taken.push(spot.box);
      ctx.fillStyle = "#1d2433";
      ctx.textAlign = spot.align;
      ctx.fillText(words[i], spot.x, spot.y);
    }
  }

  async function project(words, queryWords) {
    const vectors = await Promise.all(
      words.map((word) => api(`/vector?${query({ word, norm: true, model: state.model })}`).then((r) => r.vector)),
    );
    const points = pca2(vectors);
    drawScatter(words, points, queryWords);
    $("#projection-table tbody").replaceChildren(
      ...words.map((word, i) =>
        el("tr", { dataset: { word } }, el("td", {}, word), el("td", { class: "num" }, points[i][0].toFixed(4)), el("td", { class: "num" }, points[i][1].toFixed(4))),
      ),
    );
  }

  // ------------------------------------------------------------------ models

  function scoreTags(detail) {
    const tags = [];
    for (const ev of detail.evaluations || []) {
      const r = ev.result || {};
      const source = ev.filename ? ` (${ev.filename})` : "";
      if (ev.kind === "analogies" || r.accuracy !== undefined) {
        tags.push(el("span", { class: "score-tag", title: `${r.correct} of ${r.total} correct, ${r.skipped} skipped${source}` }, `analogies ${(100 * r.accuracy).toFixed(1)} %`));
      } else if (r.spearman !== undefined) {
        const rho = r.spearman === null || !isFinite(r.spearman) ? "n/a" : r.spearman.toFixed(3);
        tags.push(el("span", { class: "score-tag", title: `${r.pairs} pairs, ${r.oov} out of vocabulary${source}` }, `pairs ρ ${rho}`));
      }
    }
    return tags.length ? tags : [el("span", { class: "muted" }, "not evaluated")];
  }

  async function refreshModels() {
    const tbody = $("#models-table tbody");
    let list;
    try {
      list = await api("/models");
    } catch (err) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "muted" }, err.message)));
      return;
    }
    const shown = list.slice(0, 25);
    const details = await Promise.all(shown.map((m) => api(`/models/${m.model_id}`).catch(() => m)));
    state.models = details;
    if (!details.some((m) => m.model_id === state.model)) state.model = details.length ? details[0].model_id : null;
    if (!details.length) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No models yet: train one above.")));
      return;
    }
    tbody.replaceChildren(
      ...details.map((m) => {
        const training = m.training || {};
        const selected = m.model_id === state.model;
        return el(
          "tr",
          { class: selected ? "selected" : "", dataset: { modelId: m.model_id } },
          el("td", {}, el("input", { type: "radio", name: "model", value: m.model_id, checked: selected, "aria-label": `use model ${m.model_id}`, onchange: () => selectModel(m.model_id) })),
          el("td", {}, m.name || el("span", { class: "muted" }, m.source || "model")),
          el("td", { class: "mono", title: m.model_id }, shortId(m.model_id)),
          el("td", {}, fmtTime(m.created_at)),
          el("td", { class: "num" }, fmtInt(m.vocab_size)),
          el("td", { class: "num" }, m.vector_size),
          el("td", { class: "num" }, fmtRate(training.words_per_sec)),
          el("td", { class: "num" }, typeof training.final_loss === "number" ? training.final_loss.toFixed(4) : "–"),
          el("td", { class: "scores" }, scoreTags(m)),
          el("td", { class: "num" }, el("button", { type: "button", class: "small", onclick: () => chooseEvalFile(m.model_id) }, "Evaluate…")),
        );
      }),
    );
  }

  function selectModel(modelId) {
    state.model = modelId;
    for (const row of document.querySelectorAll("#models-table tbody tr")) {
      row.classList.toggle("selected", row.dataset.modelId === modelId);
    }
  }

  function chooseEvalFile(modelId) {
    state.evalTarget = modelId;
    const input = $("#eval-file");
    input.value = "";
    input.click();
  }

  async function evaluateSelected() {
    const file = $("#eval-file").files[0];
    const modelId = state.evalTarget;
    if (!file || !modelId) return;
    const message = $("#models-message");
    setMessage(message, `Evaluating model ${shortId(modelId)} on ${file.name}…`);
    try {
      const result = await postFile(`/models/${modelId}/evaluate`, file);
      const r = result.result;
      const summary = result.kind === "analogies" ? `analogy accuracy ${(100 * r.accuracy).toFixed(1)} %` : `Spearman ρ ${Number(r.spearman).toFixed(3)}`;
      setMessage(message, `${file.name}: ${summary}.`, "ok");
      await refreshModels();
    } catch (err) {
      setMessage(message, err.message, "error");
    }
  }

  // ------------------------------------------------------------------ queries

  function showResults(caption, hits) {
    $("#results-caption").textContent = caption;
    const top = Math.max(1e-9, ...hits.map((h) => Math.abs(h.score)));
    $("#results-table tbody").replaceChildren(
      ...hits.map((hit, i) =>
        el(
          "tr",
          { dataset: { word: hit.word } },
          el("td", { class: "num" }, i + 1),
          el("td", {}, el("button", { type: "button", class: "word", title: `words similar to ${hit.word}`, onclick: () => runSimilar(hit.word) }, hit.word)),
          el(
            "td",
            {},
            el("div", { class: "scorebar" }, el("div", {}, el("div", { style: `width: ${((Math.max(0, hit.score) / top) * 100).toFixed(1)}%` })), el("span", { class: "score" }, hit.score.toFixed(4))),
          ),
        ),
      ),
    );
  }

  async function runQuery(path, caption, queryWords) {
    const message = $("#query-message");
    if (!state.model) {
      setMessage(message, "No model yet: train or import one first.", "error");
      return;
    }
    setMessage(message, "Searching…");
    try {
      const res = await api(path);
      showResults(`${caption} · model ${shortId(res.model_id)}`, res.results);
      setMessage(message, "");
      const words = [...new Set([...queryWords, ...res.results.map((h) => h.word)])];
      await project(words, queryWords);
    } catch (err) {
      setMessage(message, err.message, "error");
    }
  }

  function runSimilar(word) {
    $("#similar-word").value = word;
    const topn = Number($("#similar-topn").value) || 10;
    return runQuery(`/similar?${query({ word, topn, model: state.model })}`, `Nearest to “${word}”`, [word]);
  }

  function runAnalogy() {
    const [a, b, c] = ["#analogy-a", "#analogy-b", "#analogy-c"].map((s) => $(s).value.trim());
    const topn = Number($("#similar-topn").value) || 10;
    return runQuery(`/analogy?${query({ a, b, c, topn, model: state.model })}`, `${a} : ${b} = ${c} : ?`, [a, b, c]);
  }

  // ------------------------------------------------------------------ start

  function refreshAll() {
    refreshStatus();
    refreshJobs();
    refreshModels();
  }

  function start() {
    setupKeyDialog();
    $("#train-form").addEventListener("submit", submitTraining);
    $("#cancel-button").addEventListener("click", cancelJob);
    $("#models-refresh").addEventListener("click", refreshModels);
    $("#eval-file").addEventListener("change", evaluateSelected);
    $("#similar-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const word = $("#similar-word").value.trim();
      if (word) runSimilar(word);
    });
    $("#analogy-form").addEventListener("submit", (e) => {
      e.preventDefault();
      runAnalogy();
    });
    window.addEventListener("resize", () => {
      drawLoss();
      drawScatter(state.scatter.words, state.scatter.points, state.scatter.queryWords);
    });
    drawLoss();
    drawScatter([], [], []);
    refreshAll();
    // Jobs started elsewhere (curl, another tab) show up without a reload.
    setInterval(() => {
      if (document.hidden) return;
      refreshStatus();
      refreshJobs();
    }, 5000);
  }

  start();
})();
