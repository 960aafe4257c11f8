// The dashboard's script: plain JavaScript, no libraries, nothing from other hosts.
//
// Data: /health, /queue and /jobs are polled every 2 s (and /models now and then) while the
// tab is visible; each running job's progress and segments come from its Server-Sent Events
// stream (/events/{id}), read with fetch() so the API token can go in a header. Every string
// from the service reaches the page as text (textContent or Text nodes), never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const MODELS_EVERY = 5; // polls between /models refreshes
  const RECENT_LIMIT = 20;
  const MAX_STREAMS = 3; // browsers allow 6 connections per host; leave room for polling
  const MAX_LIVE_SEGMENTS = 400;
  const TOKEN_KEY = "transcription-dashboard.api-token";
  const FORMATS = ["txt", "srt", "vtt", "tsv", "json", "verbose_json"];
  const ACTIVE = new Set(["queued", "processing"]);
  const FINISHED = new Set(["completed", "failed", "cancelled"]);

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers: text only -------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "value" || key === "max") node[key] = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child)); // strings become Text nodes
    }
    return node;
  }

  function setText(id, value) {
    const node = $(id);
    const text = value === null || value === undefined || value === "" ? "-" : String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  // -- formatting --------------------------------------------------------------------------

  function clock(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "-";
    const total = Math.max(0, Math.round(seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  function about(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "-";
    if (seconds < 1) return "now";
    if (seconds < 90) return `about ${Math.round(seconds)} s`;
    if (seconds < 5400) return `about ${Math.round(seconds / 60)} min`;
    return `about ${(seconds / 3600).toFixed(1)} h`;
  }

  function uptime(seconds) {
    if (!Number.isFinite(seconds)) return "-";
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min`;
    return `${Math.floor(seconds)} s`;
  }

  function when(iso) {
    if (!iso) return "-";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "-";
    const today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function took(job) {
    if (!job.started_at || !job.completed_at) return null;
    return (new Date(job.completed_at) - new Date(job.started_at)) / 1000;
  }

  function jobName(job) {
    return job.filename || job.job_id;
  }

  function percent(progress) {
    return `${Math.floor((progress || 0) * 100)}%`;
  }

  // -- the API token -----------------------------------------------------------------------

  let token = readToken();
  let declined = false; // the prompt was dismissed: wait for a click before asking again

  function readToken() {
    try {
      return window.localStorage.getItem(TOKEN_KEY) || null;
    } catch {
      return null;
    }
  }

  function storeToken(value) {
    token = value;
    try {
      if (value) window.localStorage.setItem(TOKEN_KEY, value);
      else window.localStorage.removeItem(TOKEN_KEY);
    } catch {
      // private mode without storage: the token lasts as long as the page
    }
    $("forget-token").hidden = !value;
  }

  class AuthNeeded extends Error {}

  // True once there is a token worth trying again with. prompt() blocks the page, so requests
  // that got their 401 meanwhile find the new token here and retry without asking again.
  function askForToken(refused) {
    if (token && token !== refused) return Promise.resolve(true);
    if (declined) return Promise.resolve(false);
    const question = refused
      ? "The service refused this API token. Enter the right one:"
      : "This service needs an API token (its --api-token). Enter it:";
    const answer = window.prompt(question, "");
    if (answer && answer.trim()) {
      storeToken(answer.trim());
      hideNotice("token");
      return Promise.resolve(true);
    }
    declined = true;
    showNotice("token", "An API token is needed to see jobs and upload.", "Enter token", () => {
      declined = false;
      askForToken(token).then((ok) => ok && refresh());
    });
    return Promise.resolve(false);
  }

  // fetch() with the token; a 401 asks for it (once for all requests) and tries again.
  async function api(path, options = {}) {
    for (let attempt = 0; attempt < 4; attempt++) {
      const headers = new Headers(options.headers || {});
      const sent = token;
      if (sent) headers.set("Authorization", `Bearer ${sent}`);
      const response = await fetch(path, { cache: "no-store", ...options, headers });
      if (response.status !== 401) return response;
      if (!(await askForToken(sent))) break;
    }
    throw new AuthNeeded("An API token is needed.");
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch {
      // not JSON
    }
    return `HTTP ${response.status}`;
  }

  // -- notices -----------------------------------------------------------------------------

  let noticeKind = null;

  function showNotice(kind, text, actionLabel, action) {
    noticeKind = kind;
    $("notice-text").textContent = text;
    const button = $("notice-action");
    button.hidden = !actionLabel;
    button.textContent = actionLabel || "";
    button.onclick = action || null;
    $("notice").hidden = false;
  }

  function hideNotice(kind) {
    if (kind && noticeKind !== kind) return;
    noticeKind = null;
    $("notice").hidden = true;
  }

  // -- health and models -------------------------------------------------------------------

  function renderHealth(body, reachable) {
    const badge = $("health-badge");
    let state = "bad";
    let label = "unreachable";
    if (reachable) {
      label = body.status || "unknown";
      // 503 while it loads, restarts or stops is a wait; a fatal error or a failed check is bad.
      const transient = body.status === "unavailable" && !body.error;
      if (body.status !== "ok") state = transient ? "wait" : "bad";
      else if (body.worker === "ready") state = "ok";
      else if (body.worker === "busy") state = "busy";
      else state = "wait";
    }
    badge.dataset.state = state;
    setText("health-status", label);
    setText("health-worker", reachable ? body.worker : null);
    setText("health-engine", reachable ? body.engine : null);
    setText("health-device", reachable ? body.device : null);
    setText("health-uptime", reachable ? uptime(body.uptime_s) : null);
    setText("health-version", reachable ? body.version : null);
    badge.title = reachable && body.error ? body.error : "";
  }

  async function loadHealth() {
    let body;
    try {
      const response = await fetch("/health", { cache: "no-store" }); // open: no token needed
      body = await response.json(); // 503 while loading or restarting carries the same body
    } catch {
      renderHealth(null, false);
      showNotice("down", "The service does not answer; retrying every 2 seconds.");
      return;
    }
    hideNotice("down");
    renderHealth(body, true);
  }

  async function loadModels() {
    const response = await api("/models");
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    const list = $("models");
    const models = Array.isArray(body.models) ? body.models : [];
    const loaded = models.filter((m) => m.loaded);
    const available = models.filter((m) => !m.loaded && m.offline).map((m) => m.name);
    const items = loaded.map((m) =>
      el(
        "li",
        { dataset: { model: m.name } },
        el("span", { class: "name", text: m.name }),
        el(
          "span",
          { class: "muted small" },
          [
            m.default ? "default" : null,
            "loaded",
            Number.isFinite(m.approx_memory_mb) ? `${Math.round(m.approx_memory_mb)} MB` : null,
          ]
            .filter(Boolean)
            .join(" · "),
        ),
      ),
    );
    if (!items.length) items.push(el("li", { class: "muted", text: "No model is loaded yet." }));
    if (available.length) {
      items.push(el("li", { class: "muted small", text: `Also offline: ${available.join(", ")}` }));
    }
    list.replaceChildren(...items);
  }

  // -- keyed rows: a row is rebuilt only when what it shows changed ----------------------

  function syncRows(container, items, keyOf, signatureOf, build) {
    const existing = new Map();
    for (const node of container.children) existing.set(node.dataset.key, node);
    const wanted = items.map((item) => {
      const key = keyOf(item);
      const signature = signatureOf(item);
      let node = existing.get(key);
      if (!node || node.dataset.signature !== signature) {
        const fresh = build(item);
        fresh.dataset.key = key;
        fresh.dataset.signature = signature;
        if (node) node.replaceWith(fresh);
        node = fresh;
      }
      existing.delete(key);
      return node;
    });
    for (const node of existing.values()) node.remove();
    wanted.forEach((node, index) => {
      if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
    });
  }

  function cancelButton(job) {
    return el("button", {
      type: "button",
      class: "cancel",
      text: "Cancel",
      "aria-label": `Cancel ${jobName(job)}`,
      onclick: () => cancelJob(job),
    });
  }

  async function cancelJob(job) {
    if (!window.confirm(`Cancel ${jobName(job)}?`)) return;
    try {
      const response = await api(`/jobs/${encodeURIComponent(job.job_id)}`, { method: "DELETE" });
      if (!response.ok && response.status !== 409) {
        showNotice("cancel", `Could not cancel ${jobName(job)}: ${await errorText(response)}`);
      }
    } catch (error) {
      if (!(error instanceof AuthNeeded)) showNotice("cancel", `Could not cancel: ${error.message}`);
    }
    refresh();
  }

  // -- queue: running jobs with live text, then the waiting ones ---------------------------

  const runs = new Map(); // job id -> {node, bar, pct, left, text, progress}

  function buildRun(job) {
    const bar = el("progress", { class: "job-progress", max: 1, value: job.progress || 0 });
    bar.dataset.jobId = job.job_id;
    const pct = el("span", { class: "pct" });
    const left = el("span", { class: "muted small" });
    const text = el("div", { class: "live-text", "aria-live": "polite" });
    text.dataset.jobId = job.job_id;
    const node = el(
      "div",
      { class: "run" },
      el(
        "div",
        { class: "run-head" },
        el("span", { class: "name", text: jobName(job) }),
        el("span", {}, pct, " ", left, " ", cancelButton(job)),
      ),
      bar,
      text,
    );
    node.dataset.jobId = job.job_id;
    const run = { node, bar, pct, left, text, progress: 0 };
    const live = lives.get(job.job_id);
    if (live) for (const segment of live.segments) appendSegment(run, segment);
    return run;
  }

  function setRunProgress(run, progress) {
    if (!Number.isFinite(progress) || progress < run.progress) return; // never step back
    run.progress = progress;
    run.bar.value = progress;
    run.pct.textContent = percent(progress);
    setRowProgress(run.node.dataset.jobId, progress);
  }

  // The small bar in a processing job's row of the recent jobs, updated in place.
  function setRowProgress(jobId, progress) {
    for (const row of $("recent").children) {
      if (row.dataset.key !== jobId) continue;
      const bar = row.querySelector("progress.mini");
      if (!bar || !Number.isFinite(progress) || progress < bar.value) return;
      bar.value = progress;
      row.querySelector(".mini-pct").textContent = ` ${percent(progress)}`;
    }
  }

  function renderQueue(body) {
    const running = Array.isArray(body.running) ? body.running : [];
    const queued = Array.isArray(body.queued) ? body.queued : [];
    const holder = $("running");
    const seen = new Set();
    for (const job of running) {
      seen.add(job.job_id);
      let run = runs.get(job.job_id);
      if (!run) {
        run = buildRun(job);
        runs.set(job.job_id, run);
      }
      setRunProgress(run, job.progress);
      run.left.textContent =
        job.estimated_remaining_s === null || job.estimated_remaining_s === undefined
          ? ""
          : `· ${about(job.estimated_remaining_s)} left`;
    }
    for (const [id, run] of runs) {
      if (!seen.has(id)) {
        run.node.remove();
        runs.delete(id);
      }
    }
    const nodes = running.map((job) => runs.get(job.job_id).node);
    if (!nodes.length) {
      if (!holder.querySelector(".empty")) {
        holder.replaceChildren(el("p", { class: "muted empty", text: "Nothing is running." }));
      }
    } else {
      holder.querySelector(".empty")?.remove();
      nodes.forEach((node, index) => {
        if (holder.children[index] !== node) holder.insertBefore(node, holder.children[index] || null);
      });
    }

    syncRows(
      $("queue"),
      queued,
      (job) => job.job_id,
      (job) => JSON.stringify([job.position, job.priority, job.priority_name, job.estimated_start_s, job.duration_s]),
      (job) => {
        const row = el(
          "tr",
          {},
          el("td", { class: "num", "data-label": "Position", text: job.position }),
          el(
            "td",
            { "data-label": "Job" },
            el("span", { class: "job-name", text: jobName(job) }),
            job.filename ? el("span", { class: "job-id", text: job.job_id }) : null,
          ),
          el("td", { "data-label": "Priority", text: job.priority_name || String(job.priority) }),
          el("td", { class: "num", "data-label": "Audio", text: clock(job.duration_s) }),
          el("td", { class: "num", "data-label": "Starts in", text: about(job.estimated_start_s) }),
          el("td", {}, cancelButton(job)),
        );
        row.dataset.jobId = job.job_id;
        return row;
      },
    );
    $("queue-table").dataset.empty = String(!queued.length);
    $("queue-empty").hidden = queued.length > 0;
    const parts = [`${queued.length} waiting`];
    if (Number.isFinite(body.estimated_wait_s)) parts.push(`a new upload starts in ${about(body.estimated_wait_s)}`);
    if (Number.isFinite(body.real_time_factor)) parts.push(`${body.real_time_factor.toFixed(2)} s per audio second`);
    $("queue-summary").textContent = `· ${parts.join(" · ")}`;

    for (const job of running.slice(0, MAX_STREAMS)) follow(job.job_id);
  }

  async function loadQueue() {
    const response = await api("/queue");
    if (!response.ok) throw new Error(await errorText(response));
    renderQueue(await response.json());
  }

  // -- live streams: Server-Sent Events read with fetch(), so a token can be sent ----------

  const lives = new Map(); // job id -> {lastId, segments}
  const streams = new Map(); // job id -> AbortController of its open stream

  function appendSegment(run, segment) {
    const box = run.text;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    const line = el("span", { class: "seg" }, el("span", { class: "t", text: clock(segment.start) }), `${(segment.text || "").trim()}\n`);
    box.append(line);
    while (box.childElementCount > MAX_LIVE_SEGMENTS) box.firstElementChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function onStreamEvent(jobId, live, type, data) {
    const run = runs.get(jobId);
    if (type === "segment") {
      live.segments.push(data);
      if (live.segments.length > MAX_LIVE_SEGMENTS) live.segments.shift();
      if (run) appendSegment(run, data);
    } else if (type === "progress") {
      if (run) setRunProgress(run, data.progress);
    } else if (type === "end" || (type === "state" && FINISHED.has(data.status))) {
      live.finished = true;
      scheduleSoon();
    }
  }

  function parseBlock(block) {
    let type = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // comments are keep-alives
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    return { type, id, data: data.join("\n") };
  }

  async function follow(jobId) {
    if (streams.has(jobId) || streams.size >= MAX_STREAMS || document.hidden) return;
    let live = lives.get(jobId);
    if (!live) {
      live = { lastId: 0, segments: [], finished: false };
      lives.set(jobId, live);
      while (lives.size > 20) lives.delete(lives.keys().next().value); // forget old jobs
    }
    if (live.finished) return;
    const controller = new AbortController();
    streams.set(jobId, controller);
    try {
      const headers = { Accept: "text/event-stream" };
      if (live.lastId) headers["Last-Event-ID"] = String(live.lastId); // resume without repeats
      const response = await api(`/events/${encodeURIComponent(jobId)}`, { headers, signal: controller.signal });
      if (!response.ok || !response.body) return; // e.g. 404: the job is gone; polling goes on
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const message = parseBlock(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!message.data) continue;
          if (message.id !== null && Number.isFinite(Number(message.id))) live.lastId = Number(message.id);
          let data;
          try {
            data = JSON.parse(message.data);
          } catch {
            continue;
          }
          onStreamEvent(jobId, live, message.type, data);
        }
      }
    } catch {
      // aborted (tab hidden), or the connection dropped: the next poll reopens it from lastId
    } finally {
      if (streams.get(jobId) === controller) streams.delete(jobId);
    }
  }

  function stopStreams() {
    for (const controller of streams.values()) controller.abort();
    streams.clear();
  }

  // -- recent jobs -------------------------------------------------------------------------

  async function download(event, job, format) {
    if (!token) return; // a plain link works: no header needed
    event.preventDefault();
    try {
      const response = await api(`/download/${encodeURIComponent(job.job_id)}?format=${format}`);
      if (!response.ok) {
        showNotice("download", `Could not download: ${await errorText(response)}`);
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: `${job.job_id}.${format === "verbose_json" ? "verbose.json" : format}` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      if (!(error instanceof AuthNeeded)) showNotice("download", `Could not download: ${error.message}`);
    }
  }

  function formatLinks(job) {
    return el(
      "span",
      { class: "formats" },
      FORMATS.map((format) =>
        el("a", {
          href: `/download/${encodeURIComponent(job.job_id)}?format=${format}`,
          target: "_blank",
          rel: "noopener",
          text: format,
          dataset: { format },
          onclick: (event) => download(event, job, format),
        }),
      ),
    );
  }

  function renderJobs(body) {
    const jobs = Array.isArray(body.jobs) ? body.jobs : [];
    syncRows(
      $("recent"),
      jobs,
      (job) => job.job_id,
      (job) =>
        JSON.stringify([job.status, job.duration_s, job.completed_at, job.error, job.note, job.filename]),
      (job) => {
        const status = el("span", { class: "status", text: job.status });
        status.dataset.status = job.status;
        const statusCell = el("td", { "data-label": "Status" }, status);
        if (job.status === "processing") {
          statusCell.append(el("progress", { class: "mini", max: 1, value: 0 }), el("span", { class: "mini-pct" }));
        }
        if (job.error) statusCell.append(el("span", { class: "error", text: job.error }));
        const row = el(
          "tr",
          { title: job.note || null },
          el(
            "td",
            { "data-label": "Job" },
            el("span", { class: "job-name", text: jobName(job) }),
            job.filename ? el("span", { class: "job-id", text: job.job_id }) : null,
          ),
          statusCell,
          el("td", { class: "num", "data-label": "Audio", text: clock(job.duration_s) }),
          el("td", { class: "num", "data-label": "Took", text: job.status === "completed" ? `${(took(job) ?? 0).toFixed(1)} s` : "" }),
          el("td", { class: "num", "data-label": "Created", text: when(job.created_at) }),
          el("td", {}, job.status === "completed" ? formatLinks(job) : null),
          el("td", {}, ACTIVE.has(job.status) ? cancelButton(job) : null),
        );
        row.dataset.jobId = job.job_id;
        row.dataset.status = job.status;
        return row;
      },
    );
    for (const job of jobs) {
      if (job.status !== "processing") continue;
      setRowProgress(job.job_id, Math.max(job.progress || 0, runs.get(job.job_id)?.progress || 0));
    }
    $("recent-table").dataset.empty = String(!jobs.length);
    $("recent-empty").hidden = jobs.length > 0;
  }

  async function loadJobs() {
    const response = await api(`/jobs?limit=${RECENT_LIMIT}`);
    if (!response.ok) throw new Error(await errorText(response));
    renderJobs(await response.json());
  }

  // -- polling: every 2 s while the tab is visible ----------------------------------------

  let timer = null;
  let running = false;
  let again = false;
  let polls = 0;

  async function refresh() {
    if (running) {
      again = true; // one more right after this one
      return;
    }
    running = true;
    clearTimeout(timer);
    timer = null;
    try {
      const tasks = [loadHealth(), loadQueue(), loadJobs()];
      if (polls % MODELS_EVERY === 0) tasks.push(loadModels());
      const results = await Promise.allSettled(tasks);
      const failed = results.find((r) => r.status === "rejected" && !(r.reason instanceof AuthNeeded));
      if (failed) showNotice("api", `Could not refresh: ${failed.reason.message}`);
      else hideNotice("api");
      const refused = results.some((r) => r.status === "rejected" && r.reason instanceof AuthNeeded);
      if (!refused) polls += 1; // keep asking for /models until it answers
      $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } finally {
      running = false;
      if (again) {
        again = false;
        refresh();
      } else if (!document.hidden) {
        timer = setTimeout(refresh, POLL_MS);
      }
    }
  }

  function scheduleSoon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 200);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer); // nobody is looking: no polls, no open streams
      timer = null;
      stopStreams();
    } else {
      refresh();
    }
  });

  // -- uploads: drag and drop or the file input; XMLHttpRequest reports upload progress ----

  const pending = [];
  let uploading = false;

  function addUploads(files) {
    for (const file of files) {
      const name = el("span", { class: "name", text: file.name });
      const state = el("span", { class: "state muted", text: "waiting" });
      const bar = el("progress", { class: "bar", max: 1, value: 0 });
      const item = el("li", {}, name, state, bar);
      item.dataset.state = "waiting";
      $("uploads").prepend(item);
      while ($("uploads").childElementCount > 8) $("uploads").lastElementChild.remove();
      pending.push({ file, priority: $("priority").value, item, state, bar });
    }
    pumpUploads();
  }

  function post(upload) {
    return new Promise((resolve) => {
      const form = new FormData();
      form.append("priority", upload.priority); // fields before the file are checked first
      form.append("file", upload.file, upload.file.name);
      const xhr = new XMLHttpRequest();
      const sent = token;
      xhr.open("POST", "/transcribe");
      if (sent) xhr.setRequestHeader("Authorization", `Bearer ${sent}`);
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable && event.total) {
          upload.bar.value = event.loaded / event.total;
          upload.state.textContent = `uploading ${percent(event.loaded / event.total)}`;
        }
      };
      xhr.onload = () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // not JSON
        }
        resolve({ status: xhr.status, body, sent, retryAfter: xhr.getResponseHeader("Retry-After") });
      };
      xhr.onerror = () => resolve({ status: 0, body: { error: "the service did not answer" }, sent });
      xhr.send(form);
    });
  }

  async function pumpUploads() {
    if (uploading) return;
    uploading = true;
    try {
      while (pending.length) {
        const upload = pending.shift();
        upload.item.dataset.state = "uploading";
        upload.state.textContent = "uploading";
        let answer = await post(upload);
        if (answer.status === 401 && (await askForToken(answer.sent))) answer = await post(upload);
        const ok = answer.status === 200 || answer.status === 202;
        upload.item.dataset.state = ok ? "done" : "error";
        upload.bar.value = ok ? 1 : 0;
        if (ok) {
          upload.item.dataset.jobId = answer.body.job_id;
          upload.state.textContent = answer.body.status === "completed" ? "done (cached)" : `queued as ${answer.body.job_id}`;
        } else {
          const reason = typeof answer.body.error === "string" ? answer.body.error : `HTTP ${answer.status}`;
          upload.state.textContent = answer.status === 429 && answer.retryAfter ? `${reason}` : reason;
          upload.state.title = reason;
        }
        scheduleSoon();
      }
    } finally {
      uploading = false;
    }
  }

  function setUpDropZone() {
    const zone = $("drop-zone");
    const input = $("file-input");
    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      input.value = ""; // choosing the same file again still fires change
      if (files.length) addUploads(files);
    });
    let depth = 0;
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      depth += 1;
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0;
      zone.classList.remove("dragging");
      const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
      if (files.length) addUploads(files);
    });
    // A file dropped beside the zone must not make the browser navigate away to it.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (event) => {
        if (!zone.contains(event.target)) event.preventDefault();
      });
    }
  }

  function start() {
    setUpDropZone();
    $("forget-token").hidden = !token;
    $("forget-token").addEventListener("click", () => {
      storeToken(null);
      declined = false;
      stopStreams();
      refresh();
    });
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
