/*
 * vstore dashboard: one page that watches the cluster through /api/v1 and never reloads.
 *
 * What this file must not do, and why:
 *  - No innerHTML, no string-built markup: node ids, host labels, paths and event texts come
 *    from the cluster and are untrusted. Every value reaches the page as textContent or as an
 *    attribute set with setAttribute on a name we chose.
 *  - No inline style attributes: the CSP (default-src 'self') forbids them. Widths of bars are
 *    set through the CSSOM (element.style.width), which the CSP allows.
 *  - No state-changing request without the CSRF token: POST/PUT/DELETE carry X-CSRF-Token and
 *    a JSON body (Content-Type: application/json, which a cross-site form cannot send).
 *
 * Flow: GET /api/v1/session (401: the login form). Then one poll every POLL_MS of cluster,
 * mds, chunkservers and events (only the ones after the last seen sequence number), and the
 * hour of history every HISTORY_MS. A 401 at any time goes back to the login form; a failed
 * fetch shows the "connection lost" banner and the poll goes on, so the page recovers by
 * itself when the server answers again.
 */
"use strict";

(() => {
  const API = "/api/v1";
  const POLL_MS = 2000;
  const HISTORY_MS = 10000;
  // A poll that takes longer than this is a lost connection, not a slow one: the next one
  // starts POLL_MS later instead of queueing behind a dead socket.
  const FETCH_TIMEOUT_MS = 6000;
  const EVENTS_SHOWN_MAX = 300;  // older entries drop off the list (the server keeps its own)
  const CHART_SPAN_S = 3600;
  const MIB = 1024 * 1024;
  const HEALTH_STATES = ["healthy", "degraded", "urgent", "unavailable"];

  // Marker for tests and for people: it changes only when the page is really loaded again.
  window.__loadedAt = Date.now();

  const $ = (id) => document.getElementById(id);

  const state = {
    csrf: null,
    polling: false,
    pollTimer: null,
    pollRunning: false,
    pollAgain: false,
    lastSeq: 0,
    lastOkMs: 0,
    historyAtMs: 0,
    history: [],      // points from /history (every interval_s)
    live: [],         // points from each /cluster answer since the last /history
    rebuildPeak: 0,   // most chunks outstanding since the current rebuild began (for progress)
    chunkservers: new Map(),
  };

  // ---- HTTP ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, data, headers) {
      super(message);
      this.status = status;       // 0: no answer (network error or timeout)
      this.data = data;
      this.headers = headers;
    }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    init.signal = abort.signal;
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (err) {
      throw new ApiError(0, abort.signal.aborted ? "no answer within " + FETCH_TIMEOUT_MS / 1000 + " s"
        : "cannot reach the server", null, null);
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;  // an error page from a proxy, or an empty body
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
      throw new ApiError(response.status, message, data, response.headers);
    }
    return data;
  }

  // ---- formatting --------------------------------------------------------------------------------

  function num(value) {
    return typeof value === "number" && isFinite(value) ? value : 0;
  }

  function fmtInt(value) {
    return num(value).toLocaleString("en-US");
  }

  function fmtBytes(value) {
    let v = num(value);
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)) + " " + units[i];
  }

  function fmtRate(mibS) {
    const v = num(mibS);
    return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " MiB/s";
  }

  function fmtTime(epochS) {
    const d = new Date(num(epochS) * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtAgo(seconds) {
    const s = num(seconds);
    if (s < 0) return "never";
    if (s < 10) return s.toFixed(1) + " s ago";
    if (s < 120) return Math.round(s) + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function pct(part, whole) {
    return whole > 0 ? Math.min(100, Math.max(0, (100 * part) / whole)) : 0;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  // ---- screens -----------------------------------------------------------------------------------

  function showLogin(message) {
    stopPolling();
    state.csrf = null;
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("conn-lost").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("password").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("login-error").textContent = "";
    $("dashboard").hidden = false;
    $("logout").hidden = false;
  }

  // lost: no answer at all (network, timeout); otherwise the server answered with an error
  // (503: the cluster has no leader, say), so what the page shows may be old
  function connectionLost(problems, lost = true) {
    const banner = $("conn-lost");
    const since = state.lastOkMs ? " Last complete update at " + fmtTime(state.lastOkMs / 1000) + "." : "";
    banner.textContent = (lost ? "Connection lost: " : "Not all data is current: ") + problems.join("; ") + "."
      + since + " Retrying every " + POLL_MS / 1000 + " s.";
    banner.dataset.lost = String(lost);
    banner.hidden = false;
    document.body.classList.add("stale");
  }

  function connectionOk() {
    $("conn-lost").hidden = true;
    document.body.classList.remove("stale");
    state.lastOkMs = Date.now();
    setText("updated", "updated " + fmtTime(state.lastOkMs / 1000));
  }

  // ---- session -----------------------------------------------------------------------------------

  async function begin() {
    try {
      const session = await api("GET", "/session");
      state.csrf = session.csrf_token;
      showDashboard();
      startPolling();
    } catch (err) {
      if (err.status === 401) {
        showLogin("");
      } else {
        // the server is not there (yet): say so and try again, no reload needed
        $("login").hidden = true;
        connectionLost([err.message]);
        setTimeout(begin, POLL_MS);
      }
    }
  }

  async function login(event) {
    event.preventDefault();
    const button = $("login-submit");
    const password = $("password").value;
    button.disabled = true;
    $("login-error").textContent = "";
    try {
      const reply = await api("POST", "/login", { password });
      state.csrf = reply.csrf_token;
      $("password").value = "";
      showDashboard();
      startPolling();
    } catch (err) {
      let message;
      if (err.status === 401) {
        message = "Wrong password" + (err.message && !err.message.startsWith("HTTP") ? ": " + err.message : ".");
      } else if (err.status === 429) {
        // the server's message says how long to wait (also in retry_after_s / Retry-After)
        const after = (err.data && err.data.retry_after_s) || (err.headers && err.headers.get("Retry-After"));
        message = err.message && !err.message.startsWith("HTTP") ? "Too many attempts: " + err.message
          : "Too many attempts." + (after ? " Try again in " + after + " s." : "");
      } else {
        message = "Login failed: " + err.message;
      }
      $("login-error").textContent = message;
      $("password").select();
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await api("POST", "/logout", {});
    } catch (err) {
      // the session ends on our side either way; a dead server forgets it too
    }
    showLogin("Logged out.");
  }

  // ---- polling -----------------------------------------------------------------------------------

  function startPolling() {
    state.polling = true;
    state.lastSeq = 0;
    clearEvents();
    state.historyAtMs = 0;
    pollNow();
  }

  function stopPolling() {
    state.polling = false;
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  // Runs a poll now; a poll already running runs once more when it is done instead of two in
  // parallel (two would race on lastSeq and could show an event twice).
  function pollNow() {
    if (!state.polling) return;
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    if (state.pollRunning) {
      state.pollAgain = true;
      return;
    }
    poll();
  }

  async function poll() {
    state.pollRunning = true;
    let again = false;
    try {
      again = await pollOnce();
    } finally {
      state.pollRunning = false;
    }
    if (!state.polling) return;
    if (again || state.pollAgain) {
      state.pollAgain = false;
      poll();
    } else {
      state.pollTimer = setTimeout(poll, POLL_MS);
    }
  }

  // One look at everything; says whether to look again at once (events to catch up on).
  async function pollOnce() {
    const wantHistory = Date.now() - state.historyAtMs >= HISTORY_MS;
    const names = ["cluster", "mds", "chunkservers", "events", "history"];
    const results = await Promise.allSettled([
      api("GET", "/cluster"),
      api("GET", "/mds"),
      api("GET", "/chunkservers"),
      api("GET", "/events?after=" + encodeURIComponent(state.lastSeq)),
      wantHistory ? api("GET", "/history") : Promise.resolve(null),
    ]);
    if (!state.polling) return false;
    const problems = [];
    for (let i = 0; i < results.length; i += 1) {
      const r = results[i];
      if (r.status === "rejected") {
        if (r.reason && r.reason.status === 401) {
          showLogin("Your session ended; log in again.");
          return false;
        }
        const message = r.reason ? r.reason.message : "failed";
        const same = problems.find((p) => p.message === message);
        if (same) same.names.push(names[i]);
        else problems.push({ message, names: [names[i]], status: r.reason ? r.reason.status : 0 });
      }
    }
    const [cluster, mds, chunkservers, events, history] =
      results.map((r) => (r.status === "fulfilled" ? r.value : null));
    let again = false;
    try {
      if (cluster) renderCluster(cluster);
      if (mds) renderMds(mds.members || []);
      if (chunkservers) renderChunkservers(chunkservers.chunkservers || []);
      if (events) again = renderEvents(events);
      if (history) {
        state.history = Array.isArray(history.points) ? history.points : [];
        state.historyAtMs = Date.now();
        const last = state.history.length ? num(state.history[state.history.length - 1].t) : 0;
        state.live = state.live.filter((p) => p.t > last);
      }
      if (cluster || history) renderCharts();
    } catch (err) {
      problems.push({ message: "cannot show the answer: " + err.message, names: [], status: -1 });
    }
    // one line per distinct problem, naming the requests that had it
    if (problems.length) {
      connectionLost(problems.map((p) => p.message + (p.names.length ? " (" + p.names.join(", ") + ")" : "")),
        problems.some((p) => p.status === 0));
    }
    else connectionOk();
    return again;
  }

  // ---- rendering: cluster ------------------------------------------------------------------------

  function renderCluster(c) {
    setText("cluster-name", c.name || "");
    const served = c.served_by || {};
    const leader = c.leader;
    setText("served-by", "served by " + (served.node_id || "?") + " (" + (served.role || "?") + ")"
      + (leader ? ", leader " + leader.node_id : ", no leader"));

    const health = HEALTH_STATES.includes(c.health) ? c.health : "unknown";
    const banner = $("health");
    banner.className = "banner health-" + health;
    banner.dataset.health = health;
    setText("health-state", health.toUpperCase());
    const reasons = $("health-reasons");
    const list = Array.isArray(c.reasons) ? c.reasons.map(String) : [];
    if (list.join("\n") !== Array.from(reasons.children, (li) => li.textContent).join("\n")) {
      reasons.replaceChildren(...list.map((r) => el("li", "", r)));
    }

    const chunks = c.chunks || {};
    for (const dd of $("chunk-health").querySelectorAll("dd[data-count]")) {
      const kind = dd.dataset.count;
      const value = num(chunks[kind]);
      const text = fmtInt(value);
      if (dd.textContent !== text) dd.textContent = text;
      dd.parentElement.classList.toggle("nonzero", value > 0);
    }

    const rb = c.rebuild || {};
    const waiting = num(rb.waiting);
    const inFlight = num(rb.in_flight);
    const outstanding = waiting + inFlight;
    setText("rebuild-waiting", fmtInt(waiting));
    setText("rebuild-in-flight", fmtInt(inFlight));
    setText("rebuild-copied", fmtBytes(rb.copied_bytes));
    setText("rebuild-rate", fmtRate(rb.mib_s));
    const rebuild = $("rebuild");
    const progress = $("rebuild-progress");
    if (outstanding > 0) {
      // Progress against the most chunks seen outstanding since this rebuild began: the API
      // gives what is left, not what there was, and a second failure mid-rebuild raises the peak.
      state.rebuildPeak = Math.max(state.rebuildPeak, outstanding);
      const done = pct(state.rebuildPeak - outstanding, state.rebuildPeak);
      $("rebuild-bar").style.width = done.toFixed(1) + "%";
      progress.setAttribute("aria-valuenow", done.toFixed(0));
      const running = inFlight > 0 || num(rb.mib_s) > 0;
      setText("rebuild-summary", (running ? "Rebuilding: " : "Waiting for repair, no copy running: ")
        + fmtInt(outstanding) + " chunk(s) left of " + fmtInt(state.rebuildPeak) + " (" + done.toFixed(0)
        + " % done)" + (running ? ", " + fmtRate(rb.mib_s) : ""));
      rebuild.dataset.active = "true";
    } else {
      state.rebuildPeak = 0;
      $("rebuild-bar").style.width = "100%";
      progress.setAttribute("aria-valuenow", "100");
      setText("rebuild-summary", "Nothing waiting for repair.");
      rebuild.dataset.active = "false";
    }

    const space = c.space || {};
    const io = c.io || {};
    const used = num(space.used_bytes);
    const capacity = num(space.capacity_bytes);
    setText("space-used", fmtBytes(used) + " (" + pct(used, capacity).toFixed(1) + " %)");
    setText("space-capacity", fmtBytes(capacity));
    setText("io-read", fmtRate(io.read_mib_s));
    setText("io-write", fmtRate(io.write_mib_s));
    $("space-bar").style.width = pct(used, capacity).toFixed(1) + "%";

    const t = num(c.time) || Date.now() / 1000;
    state.live.push({ t, read_mib_s: num(io.read_mib_s), write_mib_s: num(io.write_mib_s),
      rebuild_mib_s: num(rb.mib_s), used_bytes: used, capacity_bytes: capacity });
    state.live = state.live.filter((p) => p.t >= t - CHART_SPAN_S);
  }

  // ---- rendering: tables -------------------------------------------------------------------------

  // Rows are kept by key and only their changed cells are rewritten: a poll does not throw away
  // a button the operator is about to press, and focus and selection survive.
  function syncRows(table, items, keyOf, keyAttr, fill) {
    const tbody = table.tBodies[0];
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) existing.set(tr.getAttribute(keyAttr), tr);
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let tr = existing.get(key);
      if (tr) existing.delete(key);
      else {
        tr = document.createElement("tr");
        tr.setAttribute(keyAttr, key);
      }
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== tr) tbody.insertBefore(tr, wanted);
      fill(tr, item);
      previous = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  // cells: [className, text, title?] per column. Each cell carries its column's heading as
  // data-label, which the narrow-screen layout shows in front of the value (rows become cards).
  function fillCells(tr, cells) {
    const headings = tr.closest("table").tHead.rows[0].cells;
    while (tr.cells.length < cells.length) {
      const td = document.createElement("td");
      const heading = headings[tr.cells.length];
      const label = heading && !heading.querySelector(".visually-hidden") ? heading.textContent.trim() : "";
      if (label) td.dataset.label = label;
      tr.appendChild(td);
    }
    cells.forEach(([className, text, title], i) => {
      const td = tr.cells[i];
      if (className !== null) {
        if (td.className !== className) td.className = className;
      }
      if (text !== null && td.textContent !== text) td.textContent = text;
      if (title) td.title = title;
      else if (td.title) td.removeAttribute("title");
    });
  }

  function renderMds(members) {
    syncRows($("mds-table"), members, (m) => m.node_id, "data-node-id", (tr, m) => {
      const role = String(m.role || "unknown");
      tr.classList.toggle("down", !m.active || role === "down");
      fillCells(tr, [
        ["id", String(m.node_id)],
        ["address", String(m.address || "")],
        ["role role-" + role.replace(/[^a-z]/g, ""), role],
        ["voter", m.voter ? "voter" : "learner"],
        ["num term", fmtInt(m.term)],
        ["num commit", fmtInt(m.commit)],
        ["num applied", fmtInt(m.applied)],
        ["num lag" + (num(m.lag) > 0 ? " behind" : ""), fmtInt(m.lag)],
        ["active", m.active ? "yes" : "no"],
      ]);
    });
  }

  function renderChunkservers(list) {
    state.chunkservers = new Map(list.map((cs) => [String(cs.cs_id), cs]));
    syncRows($("cs-table"), list, (cs) => cs.cs_id, "data-cs-id", (tr, cs) => {
      const status = String(cs.status || "unknown");
      const csState = String(cs.state || "unknown");
      tr.dataset.status = status;
      tr.dataset.state = csState;
      const used = num(cs.used_bytes);
      const capacity = num(cs.capacity_bytes);
      // drain_left counts, on any server, the chunks that would be short without it: that is
      // only news for a draining one. sole (the only good copy is here) is always worth showing.
      const parts = [];
      if (csState === "draining") parts.push(fmtInt(cs.drain_left));
      if (num(cs.sole) > 0) parts.push(fmtInt(cs.sole) + " sole");
      const toMove = parts.join(", ");
      fillCells(tr, [
        ["num id", String(cs.cs_id)],
        ["node", String(cs.node_id || "")],
        ["host", String(cs.host || "")],
        ["rack", String(cs.rack || "")],
        ["status status-" + status.replace(/[^a-z]/g, ""), status],
        ["state state-" + csState.replace(/[^a-z]/g, ""), csState],
        ["num capacity", fmtBytes(capacity)],
        ["num used", fmtBytes(used) + " (" + pct(used, capacity).toFixed(0) + " %)"],
        ["num chunks", fmtInt(cs.chunks)],
        ["num read", fmtRate(cs.read_mib_s)],
        ["num write", fmtRate(cs.write_mib_s)],
        ["num heartbeat", fmtAgo(cs.last_heartbeat_s)],
        ["num to-move", toMove, num(cs.sole) > 0
          ? "chunks still to copy elsewhere; sole: chunks whose only good copy is here" : ""],
        ["actions", null],
      ]);
      syncActionButton(tr.cells[13], cs, csState);
    });
  }

  function syncActionButton(td, cs, csState) {
    const kind = csState === "active" ? "drain" : csState === "draining" ? "activate" : "";
    const id = String(cs.cs_id);
    let button = td.querySelector("button");
    if (button && (button.dataset.kind !== kind || button.dataset.csId !== id)) {
      button.remove();
      button = null;
    }
    if (!kind || button) return;
    button = el("button", kind + " small" + (kind === "drain" ? " danger" : ""), kind === "drain" ? "Drain" : "Activate");
    button.type = "button";
    button.dataset.kind = kind;
    button.dataset.csId = id;
    button.setAttribute("aria-label", (kind === "drain" ? "Drain" : "Activate") + " chunkserver " + id);
    td.appendChild(button);
  }

  async function csAction(button) {
    const id = button.dataset.csId;
    const kind = button.dataset.kind;
    const cs = state.chunkservers.get(id) || {};
    const who = "chunkserver " + id + (cs.node_id ? " (" + cs.node_id + ")" : "");
    if (kind === "drain" && !window.confirm("Drain " + who + "? Its chunks are copied to other "
        + "chunkservers and it gets no new ones.")) return;
    const result = $("action-result");
    button.disabled = true;
    result.className = "action-result";
    result.textContent = (kind === "drain" ? "Draining " : "Activating ") + who + "…";
    try {
      const reply = await api("POST", "/chunkservers/" + encodeURIComponent(id) + "/" + kind, {});
      result.classList.add("ok");
      result.textContent = "Chunkserver " + String(reply.cs_id) + " is now " + String(reply.state) + ".";
    } catch (err) {
      if (err.status === 401) {
        showLogin("Your session ended; log in again.");
        return;
      }
      result.classList.add("error");
      result.textContent = (kind === "drain" ? "Drain" : "Activate") + " of " + who + " failed: " + err.message;
    } finally {
      button.disabled = false;
    }
    pollNow();
  }

  // ---- rendering: events -------------------------------------------------------------------------

  function clearEvents() {
    $("events").replaceChildren();
    $("events-empty").hidden = false;
  }

  function renderEvents(reply) {
    const lastSeq = num(reply.last_seq);
    if (lastSeq < state.lastSeq) {
      // Sequence numbers restart with the MDS process (or the page now talks to another one):
      // start the list again rather than wait for numbers we have already seen.
      state.lastSeq = 0;
      clearEvents();
      return true;
    }
    const list = $("events");
    const fresh = (Array.isArray(reply.events) ? reply.events : [])
      .filter((e) => num(e.seq) > state.lastSeq)
      .sort((a, b) => num(a.seq) - num(b.seq));
    for (const e of fresh) {
      const level = ["info", "warning", "error"].includes(e.level) ? e.level : "info";
      const li = el("li", "event level-" + level);
      li.dataset.seq = String(e.seq);
      li.dataset.event = String(e.event || "");
      const time = el("time", "event-time", fmtTime(e.time));
      time.dateTime = new Date(num(e.time) * 1000).toISOString();
      time.title = new Date(num(e.time) * 1000).toString();
      li.append(time, el("span", "event-level", level), el("code", "event-name", String(e.event || "")),
        el("span", "event-text", String(e.text || "")));
      list.insertBefore(li, list.firstChild);  // newest first
    }
    while (list.children.length > EVENTS_SHOWN_MAX) list.lastChild.remove();
    $("events-empty").hidden = list.children.length > 0;
    state.lastSeq = Math.max(state.lastSeq, lastSeq, ...fresh.map((e) => num(e.seq)));
    return false;
  }

  // ---- charts ------------------------------------------------------------------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A round number at or above value for the top of the y axis (1, 2, 5 × 10^n).
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 5, 10]) if (m * exp >= value) return m * exp;
    return 10 * exp;
  }

  function chartPoints() {
    const last = state.history.length ? num(state.history[state.history.length - 1].t) : 0;
    const points = state.history.concat(state.live.filter((p) => p.t > last));
    const now = points.length ? num(points[points.length - 1].t) : Date.now() / 1000;
    return { points: points.filter((p) => num(p.t) >= now - CHART_SPAN_S), now };
  }

  // Draws series [{key, className}] of points into the container as an SVG line chart over the
  // last hour. Sized in real pixels of the container (redrawn on resize), so text is not
  // stretched the way a viewBox with preserveAspectRatio="none" would stretch it.
  function drawChart(container, points, now, series, scale, format) {
    const width = Math.max(200, Math.floor(container.clientWidth || 300));
    const height = 160;
    const pad = { left: 56, right: 8, top: 10, bottom: 22 };
    const w = width - pad.left - pad.right;
    const h = height - pad.top - pad.bottom;
    let top = 0;
    for (const p of points) for (const s of series) top = Math.max(top, num(p[s.key]) / scale);
    top = niceMax(top);
    const x = (t) => pad.left + w * (1 - (now - num(t)) / CHART_SPAN_S);
    const y = (v) => pad.top + h * (1 - Math.min(1, v / top));

    const svg = svgEl("svg", { width, height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": container.getAttribute("aria-label") || "chart" });
    for (let i = 0; i <= 4; i += 1) {
      const v = (top * i) / 4;
      svg.appendChild(svgEl("line", { x1: pad.left, x2: pad.left + w, y1: y(v), y2: y(v), class: "grid-line" }));
      svg.appendChild(svgEl("text", { x: pad.left - 6, y: y(v) + 4, class: "axis-label", "text-anchor": "end" },
        format(v)));
    }
    // quarter-hour ticks where there is room for them, half-hours on a phone
    const ticks = w >= 320 ? [[60, "start"], [45, "middle"], [30, "middle"], [15, "middle"], [0, "end"]]
      : [[60, "start"], [30, "middle"], [0, "end"]];
    for (const [minutes, anchor] of ticks) {
      svg.appendChild(svgEl("text", { x: x(now - minutes * 60), y: height - 6, class: "axis-label",
        "text-anchor": anchor }, minutes ? "−" + minutes + " min" : "now"));
    }
    for (const s of series) {
      // A gap of more than three intervals (the MDS was down, or the page was asleep) breaks
      // the line instead of drawing a straight line across the hole.
      let segment = [];
      const flush = () => {
        if (segment.length > 1) svg.appendChild(svgEl("polyline", { points: segment.join(" "), class: "line " + s.className }));
        else if (segment.length === 1) {
          const [cx, cy] = segment[0].split(",");
          svg.appendChild(svgEl("circle", { cx, cy, r: 2, class: "dot " + s.className }));
        }
        segment = [];
      };
      let prevT = null;
      for (const p of points) {
        const t = num(p.t);
        if (prevT !== null && t - prevT > 20) flush();
        segment.push(x(t).toFixed(1) + "," + y(num(p[s.key]) / scale).toFixed(1));
        prevT = t;
      }
      flush();
    }
    if (!points.length) {
      svg.appendChild(svgEl("text", { x: pad.left + w / 2, y: pad.top + h / 2, class: "axis-label",
        "text-anchor": "middle" }, "no data yet"));
    }
    container.replaceChildren(svg);
    container.dataset.points = String(points.length);
  }

  function renderCharts() {
    const { points, now } = chartPoints();
    const lastPoint = points.length ? points[points.length - 1] : null;
    drawChart($("chart-throughput"), points, now, [
      { key: "read_mib_s", className: "series-read" },
      { key: "write_mib_s", className: "series-write" },
      { key: "rebuild_mib_s", className: "series-rebuild" },
    ], 1, (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)));
    let maxBytes = 0;
    for (const p of points) maxBytes = Math.max(maxBytes, num(p.capacity_bytes), num(p.used_bytes));
    // one unit for the whole axis, the one that suits the largest value
    const unit = [["PiB", 2 ** 50], ["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", MIB], ["KiB", 1024]]
      .find(([, size]) => maxBytes >= size) || ["B", 1];
    drawChart($("chart-space"), points, now, [
      { key: "capacity_bytes", className: "series-capacity" },
      { key: "used_bytes", className: "series-used" },
    ], unit[1], (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)) + " " + unit[0]);
    setText("legend-read", lastPoint ? fmtRate(lastPoint.read_mib_s) : "");
    setText("legend-write", lastPoint ? fmtRate(lastPoint.write_mib_s) : "");
    setText("legend-rebuild", lastPoint ? fmtRate(lastPoint.rebuild_mib_s) : "");
    setText("legend-used", lastPoint ? fmtBytes(lastPoint.used_bytes) : "");
    setText("legend-capacity", lastPoint ? fmtBytes(lastPoint.capacity_bytes) : "");
  }

  // ---- replication policy --------------------------------------------------------------------------

  function describePolicy(reply) {
    return String(reply.path) + ": replicas " + String(reply.replicas)
      + (reply.inherited ? " (default)" : "") + ", exclusive writer " + (reply.exclusive_write ? "on" : "off");
  }

  function policyMessage(text, kind) {
    const result = $("policy-result");
    result.className = "action-result" + (kind ? " " + kind : "");
    result.textContent = text;
  }

  async function lookupPolicy() {
    const path = $("policy-path").value.trim();
    if (!path) {
      policyMessage("Give a path, e.g. /ckpt.", "error");
      return;
    }
    try {
      const reply = await api("GET", "/policies?path=" + encodeURIComponent(path));
      $("policy-current").textContent = "Current: " + describePolicy(reply);
      policyMessage("", "");
    } catch (err) {
      if (err.status === 401) return showLogin("Your session ended; log in again.");
      $("policy-current").textContent = "";
      policyMessage("Cannot read the policy of " + path + ": " + err.message, "error");
    }
  }

  async function setPolicy(event) {
    event.preventDefault();
    const path = $("policy-path").value.trim();
    const replicas = $("policy-replicas").value.trim();
    const exclusive = $("policy-exclusive").value;
    if (!path) return policyMessage("Give a path, e.g. /ckpt.", "error");
    if (replicas && !/^[0-9]+(:[0-9]+)?$/.test(replicas)) {
      return policyMessage("Replicas: N or N:MIN, e.g. 3:2.", "error");
    }
    if (!replicas && !exclusive) {
      // nothing to change: show what it is, which is what the operator may have wanted
      return lookupPolicy();
    }
    const body = { path };
    if (replicas) body.replicas = replicas;
    if (exclusive) body.exclusive_write = exclusive === "true";
    const button = $("policy-submit");
    button.disabled = true;
    policyMessage("Setting…", "");
    try {
      const reply = await api("PUT", "/policies", body);
      policyMessage("Set. " + describePolicy(reply), "ok");
      $("policy-current").textContent = "Current: " + describePolicy(reply);
    } catch (err) {
      if (err.status === 401) return showLogin("Your session ended; log in again.");
      policyMessage("Not set: " + err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  // ---- wiring ------------------------------------------------------------------------------------

  function init() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("policy-form").addEventListener("submit", setPolicy);
    $("policy-lookup").addEventListener("click", lookupPolicy);
    // one listener for every row's button: rows come and go with the polls
    $("cs-table").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-cs-id]");
      if (button && !button.disabled) csAction(button);
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(renderCharts, 150);
    });
    begin();
  }

  init();
})();
