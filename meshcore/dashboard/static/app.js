/* meshcore dashboard: authentication, polling, and rendering of every panel.
 *
 * The operator token arrives once in the URL fragment (#token=...; `meshctl dashboard` opens that URL),
 * is kept in this tab's sessionStorage, removed from the address bar, and sent as a bearer token with
 * every /v1 request. Without a token (or with one the control plane refuses) the page asks for one.
 */
"use strict";

(function () {
  const { drawLineChart } = window.MeshCharts;
  const { drawGraph } = window.MeshGraph;
  const TOKEN_KEY = "meshcore.dashboard.token";
  const VIEW_KEY = "meshcore.dashboard.graph-by"; // "service" or "version" (the graph's toggle)
  const PALETTE = ["#3b5bdb", "#0ca678", "#f08c00", "#d6336c", "#7048e8", "#1098ad", "#e8590c", "#5c940d",
    "#ae3ec9", "#495057"];
  const $ = (id) => document.getElementById(id);

  const state = { range: 900, pollMs: 3000, lastOk: 0, polls: 0, timer: null, alertsAvailable: true, colors: {}, blind: [] };

  // --- formatting ------------------------------------------------------------------------
  const fmt = {
    rps(v) {
      if (v === null || v === undefined) return "—";
      if (v === 0) return "0";
      return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v).toLocaleString();
    },
    pct(v) {
      if (v === null || v === undefined) return "—";
      if (v === 0) return "0%";
      const p = v * 100;
      return (p < 1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : Math.round(p)) + "%";
    },
    ms(v) {
      if (v === null || v === undefined) return "—";
      if (v === 0) return "0";
      if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
      return (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
    },
    duration(s) {
      if (s === null || s === undefined) return "—";
      const neg = s < 0;
      s = Math.abs(s);
      const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
      const text = d >= 1 ? `${d}d ${h}h` : h >= 1 ? `${h}h ${m}m` : m >= 1 ? `${m}m` : `${Math.floor(s)}s`;
      return neg ? `expired ${text} ago` : text;
    },
  };

  /** An HTML element with attributes and children (strings become text nodes: data is never markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP, a style attribute is not
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }

  // --- token and API ---------------------------------------------------------------------
  function takeTokenFromUrl() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = params.get("token");
    const view = params.get("view"); // #token=...&view=version opens the versioned graph
    if (view === "service" || view === "version") sessionStorage.setItem(VIEW_KEY, view);
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  class AuthError extends Error {}

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError("no operator token");
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      let message = `HTTP ${resp.status}`;
      try { message = (await resp.json()).error || message; } catch (_) { /* not JSON */ }
      throw new AuthError(message);
    }
    if (resp.status === 404) {
      let body = {};
      try { body = await resp.json(); } catch (_) { /* not JSON */ }
      return { notFound: true, datacenters: Array.isArray(body.datacenters) ? body.datacenters : [] };
    }
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return { data: await resp.json() };
  }

  function showLogin(message) {
    document.body.dataset.state = "login";
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token-input").focus();
  }

  // --- panels ----------------------------------------------------------------------------
  function colorOf(name) {
    return state.colors[name] || "#868e96";
  }

  function assignColors(services) {
    const names = services.filter((s) => s.kind === "service").map((s) => s.name).sort();
    names.forEach((n, i) => { state.colors[n] = PALETTE[i % PALETTE.length]; });
  }

  function setKpi(id, value, health, hint) {
    const card = $(id);
    card.className = `kpi ${health || ""}`;
    card.querySelector(".value").textContent = value;
    if (hint !== undefined) card.querySelector(".hint").textContent = hint;
  }

  function renderKpis(summary, alerts) {
    const t = summary.totals;
    setKpi("kpi-rps", fmt.rps(t.rps), t.rps > 0 ? "ok" : "");
    const er = t.error_rate;
    setKpi("kpi-errors", fmt.pct(er), er === null ? "" : er >= 0.05 ? "critical" : er >= 0.01 ? "warning" : "ok");
    const slowest = summary.services.filter((s) => s.p99_ms !== null).sort((a, b) => b.p99_ms - a.p99_ms)[0];
    setKpi("kpi-p99", fmt.ms(t.max_p99_ms), t.max_p99_ms === null ? "" : t.max_p99_ms >= 1000 ? "warning" : "ok",
      slowest ? slowest.name : "worst service");
    setKpi("kpi-proxies", `${t.proxies_synced} / ${t.proxies}`,
      t.proxies === 0 ? "" : t.proxies_synced === t.proxies ? "ok" : "warning");
    const next = summary.certificates[0];
    setKpi("kpi-certs", next ? fmt.duration(next.expires_in_seconds) : "—",
      !next ? "" : next.state === "ok" ? "ok" : next.state === "expiring" ? "warning" : "critical",
      next ? `next expiry · ${t.certificates} issued` : "none issued");
    if (alerts === null) {
      setKpi("kpi-alerts", "—", "", "alerting not enabled");
    } else {
      const firing = alerts.filter((a) => a.state === "firing").length;
      const pending = alerts.filter((a) => a.state === "pending").length;
      setKpi("kpi-alerts", String(firing), firing ? "critical" : "ok", pending ? `${pending} pending` : "firing or pending");
    }
  }

  function graphBy() {
    return sessionStorage.getItem(VIEW_KEY) === "version" ? "version" : "service";
  }

  function renderGraph(summary) {
    const services = summary.services;
    const by = graphBy();
    document.querySelectorAll(".view button").forEach((x) => x.classList.toggle("on", x.dataset.view === by));
    $("graph").dataset.by = by;
    $("graph-empty").hidden = services.length > 0 || summary.edges.length > 0;
    $("graph").style.display = $("graph-empty").hidden ? "" : "none";
    if (!$("graph-empty").hidden) return;
    if (by === "version") drawGraph($("graph"), ...window.MeshGraph.byVersion(services, summary.version_edges || []), fmt);
    else drawGraph($("graph"), services, summary.edges, fmt);
  }

  function renderServices(summary) {
    const body = $("services").tBodies[0];
    const rows = summary.services.filter((s) => s.kind === "service").map((s) => el("tr", { "data-service": s.name },
      el("td", { class: "svc" }, el("i", { class: "dot", style: `background:${colorOf(s.name)}` }), s.name),
      el("td", { class: "num" }, fmt.rps(s.rps)),
      el("td", { class: `num ${s.error_rate >= 0.05 ? "hot" : ""}` }, fmt.pct(s.error_rate)),
      el("td", { class: "num" }, fmt.ms(s.p99_ms)),
      el("td", { class: "num" }, `${s.healthy_instances} / ${s.instances}`),
      el("td", {}, el("span", { class: `pill ${s.health}` }, s.health))));
    body.replaceChildren(...rows);
  }

  function renderResilience(summary) {
    const services = summary.services.filter((s) => s.kind === "service");
    const cell = (v) => el("td", { class: `num ${v > 0 ? "hot" : "zero"}` }, v > 0 ? fmt.rps(v) : "0");
    $("resilience").tBodies[0].replaceChildren(...services.map((s) => el("tr", { "data-service": s.name },
      el("td", { class: "svc" }, s.name), cell(s.policy_denied), cell(s.circuit_breaker_overflow), cell(s.retry_exhausted))));
    $("resilience-empty").hidden = services.length > 0;
  }

  // Under the delivery state: how current the proxy's metrics are, when they are not fresh.
  const METRICS_NOTE = { fallback: "metrics via Envoy fallback", stale: "metrics stale", unreachable: "metrics unreachable" };
  function metricsNote(p) {
    const note = METRICS_NOTE[p.metrics_state] || (p.scrape_error ? "metrics unreachable" : "");
    if (!note) return null;
    const age = p.metrics_age_seconds == null ? "" : ` (${Math.round(p.metrics_age_seconds)}s old)`;
    return el("div", { class: `small metrics-${p.metrics_state || "unreachable"}`, title: p.scrape_error || "" }, note + age);
  }

  function renderProxies(summary) {
    const rows = summary.proxies.map((p) => el("tr", { "data-node": p.node },
      el("td", { class: "svc" }, p.node),
      el("td", {}, [...p.services, ...p.gateways].join(", ") || "—"),
      el("td", {}, el("span", { class: `pill ${p.state}`, title: p.error || "" }, p.state),
        metricsNote(p)),
      el("td", {}, el("code", {}, (p.version || "—").slice(0, 10)))));
    $("proxies").tBodies[0].replaceChildren(...rows);
    $("proxies-empty").hidden = rows.length > 0;
    $("proxies-count").textContent = rows.length ? `${summary.totals.proxies_synced} of ${rows.length} in sync` : "";
  }

  function renderCerts(summary) {
    const items = summary.certificates.map((c) => el("li", { class: c.state },
      el("div", { class: "row" },
        el("span", { class: "id", title: c.spiffe_id }, c.spiffe_id.replace(/^spiffe:\/\//, "")),
        el("span", { class: "left" }, fmt.duration(c.expires_in_seconds))),
      el("div", { class: "node" }, c.node ? `node ${c.node}` : "control plane"),
      el("div", { class: "bar" }, el("i", { style: `width:${(c.fraction_left * 100).toFixed(1)}%` }))));
    $("certs").replaceChildren(...items);
    $("certs-empty").hidden = items.length > 0;
    const expiring = summary.totals.certificates_expiring;
    $("certs-count").textContent = items.length ? `${items.length} issued${expiring ? ` · ${expiring} expiring` : ""}` : "";
    $("ca-root").textContent = summary.ca_root_expires_in_seconds === null ? ""
      : `CA root expires in ${fmt.duration(summary.ca_root_expires_in_seconds)}`;
  }

  function renderAlerts(alerts) {
    const list = $("alerts");
    if (alerts === null) {
      list.replaceChildren();
      $("alerts-empty").hidden = false;
      $("alerts-empty").textContent = "Alerting is not enabled on this control plane.";
      $("alerts-count").textContent = "";
      return;
    }
    const order = { firing: 0, pending: 1 }, sev = { critical: 0, warning: 1, info: 2 };
    const active = alerts.filter((a) => a.state === "firing" || a.state === "pending")
      .sort((a, b) => (order[a.state] - order[b.state]) || ((sev[a.severity] ?? 3) - (sev[b.severity] ?? 3)));
    list.replaceChildren(...active.map((a) => {
      const labels = Object.entries(a.labels || {}).filter(([k]) => !["alertname", "severity"].includes(k))
        .map(([k, v]) => `${k}=${v}`).join(" ");
      const since = a.fired_at || a.active_since;
      return el("li", { class: a.severity || "info", "data-alert": a.name },
        el("div", { class: "title" }, el("span", {}, a.name), el("span", { class: `pill ${a.state}` }, a.state)),
        el("div", { class: "summary" }, (a.annotations && (a.annotations.summary || a.annotations.description)) || labels),
        el("div", { class: "when" }, [a.severity, labels, since ? `since ${whenText(since)}` : ""].filter(Boolean).join(" · ")));
    }));
    $("alerts-empty").hidden = active.length > 0;
    $("alerts-empty").textContent = "Nothing is firing.";
    $("alerts-count").textContent = active.length ? `${active.length} active` : "";
  }

  function whenText(value) {
    const t = typeof value === "number" ? value * 1000 : Date.parse(value);
    return Number.isFinite(t) ? new Date(t).toLocaleTimeString() : String(value);
  }

  async function renderCharts(summary) {
    const now = Date.now() / 1000;
    const gap = Math.max(2.5 * summary.collector.interval_seconds, 6);
    const specs = [["request_rate", "chart-rps", fmt.rps], ["error_rate", "chart-errors", fmt.pct], ["p99_ms", "chart-p99", fmt.ms]];
    const results = await Promise.all(specs.map(([name]) => api(`/v1/dashboard/series?signal=${name}&since=${state.range}`)));
    // The x axis spans the chosen range, or less when the collector has not been running that long.
    let first = now;
    for (const r of results) for (const s of (r.data ? r.data.series : [])) if (s.points.length) first = Math.min(first, s.points[0][0]);
    const from = Math.max(now - state.range, Math.min(first, now - 60));
    specs.forEach(([, id, format], i) => {
      const data = results[i].data || { series: [] };
      const series = data.series.map((s) => ({ name: s.labels.service, color: colorOf(s.labels.service), points: s.points }));
      drawLineChart($(id), series, { from, to: now, format, gapSeconds: gap });
    });
    const names = summary.services.filter((s) => s.kind === "service").map((s) => s.name);
    $("chart-legend").replaceChildren(...names.map((n) => el("span", {}, el("i", { style: `background:${colorOf(n)}` }), n)));
  }


  // --- click-through: a graph node's or edge's details in a side panel -------------------------
  // state.detail: what the panel shows ({kind: "service", name, version} or {kind: "edge", source, destination,
  // source_version, destination_version, key}); refreshed on every poll while open, closed with Esc or ×.
  const compact = (v) => JSON.stringify(v);

  function section(title, ...children) {
    return el("section", { class: "detail-section" }, el("h3", {}, title), ...children);
  }

  function figuresLine(f, since) {
    if (!f || f.rps === null || f.rps === undefined) return el("p", { class: "muted", "data-figure": "none" }, `no traffic in the last ${fmt.duration(since)}`);
    return el("p", { class: "figures", "data-rps": f.rps },
      `${fmt.rps(f.rps)} rps · ${fmt.pct(f.error_rate)} errors · p99 ${fmt.ms(f.p99_ms)} over ${fmt.duration(since)}`,
      el("br"), el("span", { class: "muted" }, `last interval: ${fmt.rps(f.latest_rps)} rps · ${fmt.pct(f.latest_error_rate)} · p99 ${fmt.ms(f.latest_p99_ms)}`));
  }

  function resourceList(items) {
    if (!items.length) return el("p", { class: "muted" }, "No mesh resource applies.");
    return el("ul", { class: "resources" }, ...items.map((r) => el("li", { "data-kind": r.kind, "data-resource": `${r.namespace}/${r.name}` },
      el("span", { class: "kind" }, r.kind), " ", el("code", {}, `${r.namespace}/${r.name}`),
      el("div", { class: "muted" }, [r.why, r.detail].filter(Boolean).join(" · ")))));
  }

  function renderServiceDetail(d) {
    const healthy = d.instances.filter((i) => i.healthy).length;
    const rows = d.instances.map((i) => el("tr", { "data-instance": i.id },
      el("td", { class: "svc" }, i.id), el("td", {}, i.node), el("td", {}, el("code", {}, i.address)),
      el("td", {}, [i.version || "—", i.datacenter].join(" · ")),
      el("td", {}, el("span", { class: `pill ${i.healthy ? "ok" : "critical"}` }, i.healthy ? "passing" : "critical"))));
    const den = d.denials;
    const denials = den.per_second === null ? el("p", { class: "muted" }, "No denial counted in the window.")
      : el("p", { class: den.per_second > 0 ? "hot" : "", "data-denied": den.per_second },
        `${fmt.rps(den.per_second)}/s on average, ${fmt.rps(den.latest_per_second)}/s last interval, ≈${Math.round(den.estimated_total)} in the window`);
    return [
      section("Traffic in", figuresLine(d.figures, d.since_seconds)),
      section(`Instances · ${healthy} of ${d.instances.length} passing`, el("div", { class: "scroll" }, el("table", { class: "table" },
        el("thead", {}, el("tr", {}, ...["Instance", "Node", "Address", "Version · DC", "Health"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)))),
      section("Policies and routes that apply", resourceList(d.resources)),
      section("Recent denials", denials, den.callers.length ? el("ul", { class: "resources" }, ...den.callers.map((c) =>
        el("li", { "data-denied-caller": c.source }, el("b", {}, c.source), " by ", el("code", {}, c.policy),
          el("span", { class: "muted" }, ` · ${fmt.rps(c.per_second)}/s, ≈${Math.round(c.estimated_total)}`)))) : null,
      el("p", { class: "muted small" }, den.note)),
    ];
  }

  function renderEdgeDetail(d) {
    const routes = d.routes.map((r) => el("li", { "data-route": r.name || `http[${r.index}]` },
      el("code", {}, r.name || `http[${r.index}]`), " ", r.match.length ? compact(r.match) : "everything", " → ", el("b", {}, r.to),
      Object.keys(r.extra).length ? el("div", { class: "muted" }, Object.entries(r.extra).map(([k, v]) => `${k}: ${compact(v)}`).join(" · ")) : null));
    const verdict = d.authz_allowed === null ? el("p", { class: "muted" }, d.authz_note)
      : el("p", { class: d.authz_allowed ? "" : "hot", "data-allowed": String(d.authz_allowed) },
        el("span", { class: `pill ${d.authz_allowed ? "ok" : "critical"}` }, d.authz_allowed ? "allowed" : "denied"), ` ${d.authz_note}`);
    const groups = d.authz.map((v) => el("li", {}, el("code", {}, v.instances.join(", ")), ` ${v.allowed ? "allowed" : "denied"}`,
      v.policy ? el("span", {}, " by ", el("code", { "data-policy": v.policy }, v.policy)) : null, el("div", { class: "muted" }, v.reason)));
    const dr = d.destination_rule;
    return [
      section("Calls", figuresLine(d.figures, d.since_seconds)),
      section("Routes for this caller", el("p", { class: "muted" }, d.route_note), routes.length ? el("ol", { class: "routes" }, ...routes) : null),
      section("Destination policy", dr ? resourceList([dr]) : el("p", { class: "muted" }, "No DestinationRule for these calls: the mesh's default load balancing and connection settings."),
        Object.keys(d.traffic_policy).length ? el("pre", {}, JSON.stringify(d.traffic_policy, null, 2)) : null),
      section("Authorization", verdict, groups.length ? el("ul", { class: "resources" }, ...groups) : null, authzForm(d)),
    ];
  }

  /** Ask about another call (method and path) than the GET / the verdict is for: meshctl authz check's question. */
  function authzForm(d) {
    const [method, path] = d.authz_request.split(" ");
    const m = el("input", { id: "authz-method", value: method, size: 6, "aria-label": "method" });
    const p = el("input", { id: "authz-path", value: path, size: 22, "aria-label": "path" });
    const form = el("form", { class: "authz-form" }, m, p, el("button", { type: "submit" }, "Check"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (!state.detail) return;
      state.detail.method = m.value.trim().toUpperCase() || "GET";
      state.detail.path = p.value.trim() || "/";
      loadDetail();
    });
    return form;
  }

  function detailTitle(t) {
    if (t.kind === "service") return [t.name, t.version].filter(Boolean).join(" ");
    const end = (s, v) => [s, v].filter(Boolean).join(" ");
    return `${end(t.source, t.source_version)} → ${end(t.destination, t.destination_version)}`;
  }

  async function loadDetail(background) {
    const t = state.detail;
    if (!t) return;
    const typing = () => document.activeElement && document.activeElement.tagName === "INPUT" && $("detail").contains(document.activeElement);
    if (background && typing()) return; // a poll's refresh would replace what is being typed
    const q = new URLSearchParams({ since: String(state.range) });
    for (const k of ["name", "version", "source", "destination", "source_version", "destination_version", "method", "path"]) if (t[k]) q.set(k, t[k]);
    const path = t.kind === "service" ? "/v1/dashboard/service" : "/v1/dashboard/edge";
    const panel = $("detail");
    try {
      const resp = await api(`${path}?${q}`);
      if (state.detail !== t) return; // another one was opened meanwhile
      if (background && typing()) return; // typing began while the poll was on its way
      panel.dataset.loaded = resp.notFound ? "missing" : "yes";
      const missing = resp.notFound && resp.datacenters.length
        ? `In datacenter ${resp.datacenters.join(", ")}: not a datacenter whose catalog this control plane reads.`
        : "Not in the catalog any more.";
      $("detail-body").replaceChildren(...(resp.notFound ? [el("p", { class: "muted" }, missing)]
        : t.kind === "service" ? renderServiceDetail(resp.data) : renderEdgeDetail(resp.data)));
    } catch (err) {
      if (state.detail !== t) return;
      panel.dataset.loaded = "error";
      $("detail-body").replaceChildren(el("p", { class: "error-text" }, `cannot read the details: ${err.message}`));
    }
  }

  function openDetail(target) {
    state.detail = target;
    const panel = $("detail");
    panel.hidden = false;
    panel.dataset.kind = target.kind;
    panel.dataset.loaded = "no";
    $("detail-title").textContent = detailTitle(target);
    $("detail-kind").textContent = target.kind === "service" ? (target.version ? "version" : "service") : "edge";
    $("detail-body").replaceChildren(el("p", { class: "muted" }, "Loading…"));
    markSelected();
    loadDetail();
    $("detail-close").focus();
  }

  function closeDetail() {
    state.detail = null;
    $("detail").hidden = true;
    markSelected();
  }

  /** Outline what the panel shows (the graph is redrawn on every poll). */
  function markSelected() {
    const t = state.detail;
    for (const g of $("graph").querySelectorAll(".selected")) g.classList.remove("selected");
    if (!t) return;
    const sel = t.kind === "service" ? `g.node[data-service="${CSS.escape(t.node)}"]`
      : `g.edge[data-source="${CSS.escape(t.from)}"][data-destination="${CSS.escape(t.to)}"]`;
    const g = $("graph").querySelector(sel);
    if (g) g.classList.add("selected");
  }

  /** What a click on the graph (a node, an edge or an edge's label) opens, or null. */
  function targetOf(elem) {
    const node = elem.closest("g.node");
    if (node) return { kind: "service", node: node.dataset.service, name: node.dataset.name || node.dataset.service, version: node.dataset.version || "" };
    let edge = elem.closest("g.edge");
    const label = elem.closest("g.edge-label");
    if (label) edge = $("graph").querySelector(`g.edge[data-source="${CSS.escape(label.dataset.source)}"][data-destination="${CSS.escape(label.dataset.destination)}"]`);
    if (!edge) return null;
    const d = edge.dataset;
    const versioned = d.sourceService !== undefined;
    return { kind: "edge", from: d.source, to: d.destination, source: versioned ? d.sourceService : d.source,
      destination: versioned ? d.destinationService : d.destination, source_version: versioned ? d.sourceVersion : "",
      destination_version: versioned ? d.destinationVersion : "" };
  }

  // --- polling ---------------------------------------------------------------------------
  async function poll() {
    try {
      const [summaryResp, alertsResp] = await Promise.all([api("/v1/dashboard/summary"), api("/v1/alerts")]);
      const summary = summaryResp.data;
      const alerts = alertsResp.notFound ? null : (Array.isArray(alertsResp.data) ? alertsResp.data : (alertsResp.data.alerts || []));
      $("login").hidden = true;
      $("trust-domain").textContent = summary.trust_domain;
      assignColors(summary.services);
      renderKpis(summary, alerts);
      state.summary = summary;
      renderGraph(summary);
      markSelected();
      if (state.detail) loadDetail(true);
      renderServices(summary);
      renderResilience(summary);
      renderProxies(summary);
      renderCerts(summary);
      renderAlerts(alerts);
      await renderCharts(summary);
      const interval = summary.collector.interval_seconds || 5;
      state.pollMs = Math.min(5000, Math.max(1000, interval * 1000));
      $("collector-info").textContent = `collector every ${interval}s, ${Math.round(summary.collector.history_seconds / 60)} min of history`;
      state.lastOk = Date.now();
      state.polls += 1;
      document.body.dataset.polls = String(state.polls);
      document.body.dataset.hasSignals = summary.collector.signals_at ? "yes" : "no";
      // Polling works, but proxies whose metrics cannot be read leave the numbers partial: never a green "live".
      // Red ("blind") while any proxy's figures are missing; amber ("degraded") while any are carried over
      // or read from Envoy's own stats because the agent's merged endpoint failed.
      const degraded = summary.collector.degraded || {};
      for (const node of Object.keys(summary.collector.errors || {})) degraded[node] = degraded[node] || "unreachable";
      state.degraded = degraded;
      state.ages = summary.collector.metrics_age_seconds || {};
      document.body.dataset.state = metricsState(degraded);
      tickLiveLabel();
    } catch (err) {
      if (err instanceof AuthError) {
        showLogin(sessionStorage.getItem(TOKEN_KEY) ? `The control plane refused the token: ${err.message}` : "");
        return; // wait for a token
      }
      document.body.dataset.state = "error";
      $("live").querySelector("span").textContent = `cannot reach the control plane (${err.message}); retrying`;
    }
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, state.pollMs);
  }

  function metricsState(degraded) {
    const states = Object.values(degraded);
    return states.includes("unreachable") ? "blind" : (states.length ? "degraded" : "live");
  }

  // "metrics unreachable: vm2 (last 40s ago) · stale: vm3 (12s old) · via Envoy fallback: vm1"
  function metricsLabel(degraded, ages) {
    const parts = [];
    for (const [what, label] of [["unreachable", "metrics unreachable"], ["stale", "metrics stale"],
                                 ["fallback", "via Envoy fallback"]]) {
      const nodes = Object.keys(degraded).filter((n) => degraded[n] === what).sort();
      if (!nodes.length) continue;
      const named = nodes.map((n) => (ages[n] == null ? n : `${n} (${Math.round(ages[n])}s old)`));
      parts.push(`${label}: ${named.join(", ")}`);
    }
    return parts.join(" · ");
  }

  function tickLiveLabel() {
    if (["live", "stale", "blind", "degraded"].includes(document.body.dataset.state)) {
      const ago = Math.round((Date.now() - state.lastOk) / 1000);
      const degraded = state.degraded || {};
      document.body.dataset.state = ago > 30 ? "stale" : metricsState(degraded);
      const updated = ago <= 1 ? "updated just now" : `updated ${ago}s ago`;
      const label = metricsLabel(degraded, state.ages || {});
      $("live").querySelector("span").textContent = label ? `${label} · ${updated}` : `live · ${updated}`;
    }
  }

  function start() {
    takeTokenFromUrl();
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      document.body.dataset.state = "loading";
      poll();
    });
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      clearTimeout(state.timer);
      showLogin("Signed out: the token is forgotten in this tab.");
    });
    for (const b of document.querySelectorAll(".view button")) {
      b.addEventListener("click", () => {
        sessionStorage.setItem(VIEW_KEY, b.dataset.view);
        if (state.summary) renderGraph(state.summary);
        markSelected();
      });
    }
    $("graph").addEventListener("click", (ev) => {
      const target = targetOf(ev.target);
      if (target) openDetail(target);
    });
    $("graph").addEventListener("keydown", (ev) => {
      const target = ev.key === "Enter" ? targetOf(ev.target) : null;
      if (target) openDetail(target);
    });
    $("detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && state.detail) closeDetail();
    });
    for (const b of document.querySelectorAll(".range:not(.view) button")) {
      b.addEventListener("click", () => {
        state.range = Number(b.dataset.range);
        document.querySelectorAll(".range:not(.view) button").forEach((x) => x.classList.toggle("on", x === b));
        poll();
      });
    }
    setInterval(tickLiveLabel, 1000);
    if (!sessionStorage.getItem(TOKEN_KEY)) showLogin("");
    else poll();
  }

  start();
})();
