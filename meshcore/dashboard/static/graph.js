/* meshcore dashboard: the live service graph (layered left to right, callers before callees). */
"use strict";

(function () {
  const { svg } = window.MeshCharts;
  const NODE_W = 168, NODE_H = 58, ROW_GAP = 40, MARGIN = 24, MIN_GAP = 150, MAX_GAP = 280;

  /** Layer of each node: the longest chain of callers in front of it (cycles are cut). */
  function layers(names, edges) {
    const layer = Object.fromEntries(names.map((n) => [n, 0]));
    for (let i = 0; i < names.length; i++) {
      let moved = false;
      for (const e of edges) {
        if (e.source === e.destination) continue;
        if (layer[e.destination] < layer[e.source] + 1 && layer[e.source] + 1 < names.length) {
          layer[e.destination] = layer[e.source] + 1;
          moved = true;
        }
      }
      if (!moved) break;
    }
    return layer;
  }

  function layout(services, edges, available) {
    const names = [...new Set([...services.map((s) => s.name), ...edges.flatMap((e) => [e.source, e.destination])])].sort();
    const layer = layers(names, edges);
    const columns = [];
    for (const n of names) (columns[layer[n]] = columns[layer[n]] || []).push(n);
    const pos = {};
    // Order each column by the average row of its callers, so edges cross less.
    columns.forEach((col, ci) => {
      if (ci > 0) {
        const rank = (n) => {
          const rows = edges.filter((e) => e.destination === n && pos[e.source]).map((e) => pos[e.source].row);
          return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 1e9;
        };
        col.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
      }
      col.forEach((n, row) => { pos[n] = { col: ci, row }; });
    });
    // Spread the columns over the width there is, within limits (edge labels sit between columns).
    const spare = (available || 0) - 2 * MARGIN - columns.length * NODE_W;
    const COL_GAP = Math.max(MIN_GAP, Math.min(MAX_GAP, columns.length > 1 ? spare / (columns.length - 1) : MIN_GAP));
    const tallest = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
    const height = MARGIN * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
    for (const n of names) {
      const col = columns[pos[n].col];
      const colHeight = col.length * NODE_H + (col.length - 1) * ROW_GAP;
      pos[n].x = MARGIN + pos[n].col * (NODE_W + COL_GAP);
      pos[n].y = (height - colHeight) / 2 + pos[n].row * (NODE_H + ROW_GAP);
    }
    const width = MARGIN * 2 + columns.length * NODE_W + (columns.length - 1) * COL_GAP;
    return { names, pos, width: Math.max(width, available || 400), height };
  }

  const dcs = (v) => (v || "").split(",").filter(Boolean);

  /** True when the edge's requests left their datacenter (a gateway, or a destination datacenter of another). */
  function crossesDatacenters(e) {
    const from = dcs(e.source_datacenter);
    return (e.gateways || []).length > 0 || dcs(e.destination_datacenter).some((d) => !from.includes(d));
  }

  /** "dc1→dc2 via gw1 (0.4 cx/s) → gw2": where a cross-datacenter edge went ("" for one that stayed). */
  function route(e, fmt) {
    if (!crossesDatacenters(e)) return "";
    const kb = (b) => (b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB/s` : b >= 1e3 ? `${(b / 1e3).toFixed(1)} kB/s` : `${Math.round(b)} B/s`);
    const hops = (e.gateways || []).map((g) => {
      const figures = [];
      if (g.bytes_per_second !== null && g.bytes_per_second !== undefined) figures.push(kb(g.bytes_per_second));
      if (g.connections_per_second !== null && g.connections_per_second !== undefined) figures.push(`${fmt.rps(g.connections_per_second)} cx/s`);
      if (g.connection_error_rate) figures.push(`${fmt.pct(g.connection_error_rate)} failed`);
      return figures.length ? `${g.node} (${figures.join(", ")})` : g.node;
    });
    return `${e.source_datacenter || "?"}→${e.destination_datacenter || "?"}` + (hops.length ? ` via ${hops.join(" → ")}` : "");
  }

  function edgeLabel(e, fmt) {
    const where = route(e, fmt);
    if (!(e.rps > 0)) return where ? `idle · ${where}` : "idle";
    const parts = [`${fmt.rps(e.rps)} rps`, fmt.pct(e.error_rate)];
    if (e.p99_ms !== null && e.p99_ms !== undefined) parts.push(`p99 ${fmt.ms(e.p99_ms)}`);
    if (where) parts.push(where);
    return parts.join(" · ");
  }

  function healthOf(rps, errorRate) {
    if (errorRate !== null && errorRate !== undefined && errorRate >= 0.05) return "critical";
    if (errorRate !== null && errorRate !== undefined && errorRate >= 0.01) return "warning";
    return rps > 0 ? "ok" : "idle";
  }

  /** The graph by version: a node per version of each service (per datacenter too when there are several), from
   * the summary's version_edges; callers without a version (gateways) keep their service's node. */
  function byVersion(services, versionEdges) {
    const kinds = Object.fromEntries(services.map((s) => [s.name, s.kind]));
    const manyDcs = new Set(versionEdges.flatMap((e) => [...dcs(e.source_datacenter), ...dcs(e.destination_datacenter)])).size > 1;
    const nodeName = (service, version, dc) => [service, version].filter(Boolean).join(" ") + (manyDcs && dc ? ` @${dc}` : "");
    const nodes = {};
    const node = (service, version, dc) => {
      const name = nodeName(service, version, dc);
      nodes[name] = nodes[name] || { name, service, version, datacenter: dc, kind: kinds[service] || "service", rps: null,
        error_rate: null, p99_ms: null, failed: 0 };
      return nodes[name];
    };
    const edges = versionEdges.map((e) => {
      const a = node(e.source, e.source_version, e.source_datacenter);
      const b = node(e.destination, e.destination_version, e.destination_datacenter);
      b.rps = (b.rps || 0) + e.rps;
      b.failed += e.rps * (e.error_rate || 0);
      if (e.p99_ms !== null && e.p99_ms !== undefined) b.p99_ms = Math.max(b.p99_ms || 0, e.p99_ms);
      return { ...e, source: a.name, destination: b.name, source_service: e.source, destination_service: e.destination };
    });
    for (const n of Object.values(nodes)) {
      if (n.rps !== null) n.error_rate = n.rps > 0 ? n.failed / n.rps : null;
      else n.note = "no mesh callers";
      n.health = n.kind === "gateway" ? "ok" : healthOf(n.rps || 0, n.error_rate);
    }
    return [Object.values(nodes), edges];
  }

  /** Render services [{name, kind, rps, error_rate, p99_ms, health}] and edges into svgEl (by version: the nodes
   * and edges byVersion() makes). */
  function drawGraph(svgEl, services, edges, fmt) {
    svgEl.replaceChildren();
    const available = Math.floor(svgEl.parentElement.clientWidth || 0);
    const { names, pos, width, height } = layout(services, edges, available);
    svgEl.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svgEl.style.width = `${width}px`; // drawn 1:1 (never shrunk); the frame scrolls when it is narrower
    svgEl.style.height = `${Math.max(260, height)}px`;
    const defs = svg("defs");
    for (const h of ["ok", "warning", "critical", "idle"]) {
      const color = getComputedStyle(document.documentElement).getPropertyValue(`--${h}`).trim() || "#888";
      defs.append(svg("marker", { id: `arrow-${h}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 11,
        markerHeight: 11, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color })));
    }
    svgEl.append(defs);
    const byName = Object.fromEntries(services.map((s) => [s.name, s]));
    const maxRps = Math.max(0.001, ...edges.map((e) => e.rps || 0));
    const labels = [];
    for (const e of edges) {
      const a = pos[e.source], b = pos[e.destination];
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 4, y2 = b.y + NODE_H / 2;
      const dx = Math.max(40, (x2 - x1) / 2);
      const d = `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
      const widthPx = e.rps > 0 ? 1.6 + 4.4 * Math.sqrt(e.rps / maxRps) : 1.4;
      const cross = crossesDatacenters(e);
      const g = svg("g", { class: `edge ${e.health}${cross ? " cross-dc" : ""}`, "data-source": e.source,
        "data-destination": e.destination, "data-rps": e.rps, "data-error-rate": e.error_rate ?? "",
        "data-p99-ms": e.p99_ms ?? "", "data-source-datacenter": e.source_datacenter || "",
        "data-destination-datacenter": e.destination_datacenter || "",
        "data-gateways": (e.gateways || []).map((x) => x.node).join(",") });
      if (e.source_service !== undefined) {
        for (const [k, v] of [["source-service", e.source_service], ["source-version", e.source_version],
          ["destination-service", e.destination_service], ["destination-version", e.destination_version]]) g.setAttribute(`data-${k}`, v || "");
      }
      const path = svg("path", { d, "stroke-width": widthPx.toFixed(2), "marker-end": `url(#arrow-${e.health})` });
      path.append(svg("title", {}, `${e.source} → ${e.destination}: ${edgeLabel(e, fmt)} (click for details)`));
      g.setAttribute("tabindex", "0"); // clicked (or Enter) opens the edge's details (app.js)
      g.append(svg("path", { d, class: "hit" }), path); // a wide invisible stroke: thin edges are easy to click
      svgEl.append(g);
      labels.push({ text: edgeLabel(e, fmt), x: (x1 + x2) / 2, y: (y1 + y2) / 2, health: e.health,
        source: e.source, destination: e.destination });
    }
    for (const n of names) {
      const s = byName[n] || { name: n, kind: "service", health: "idle", rps: null, error_rate: null, p99_ms: null };
      const p = pos[n];
      const g = svg("g", { class: `node ${s.health} ${s.kind}`, "data-service": n, "data-rps": s.rps ?? "",
        "data-error-rate": s.error_rate ?? "", "data-p99-ms": s.p99_ms ?? "", transform: `translate(${p.x},${p.y})`,
        "data-name": s.service || n, tabindex: 0 }); // data-name: the catalog service (a version's node too)
      g.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 9 }));
      g.append(svg("text", { class: "title", x: 14, y: 23 }, n));
      if (s.version !== undefined) {
        g.setAttribute("data-version", s.version || "");
        g.setAttribute("data-datacenter", s.datacenter || "");
      }
      const stats = s.kind === "gateway" ? "gateway" : s.note ? s.note
        : s.rps === null || s.rps === undefined ? "no data yet"
        : `${fmt.rps(s.rps)} rps · ${fmt.pct(s.error_rate)}${s.p99_ms != null ? " · " + fmt.ms(s.p99_ms) : ""}`;
      g.append(svg("text", { class: "stats", x: 14, y: 43 }, stats));
      svgEl.append(g);
    }
    // Labels last, above nodes and lines, on a white box sized to the text.
    for (const l of labels) {
      const label = svg("g", { class: `edge-label ${l.health}`, "data-source": l.source, "data-destination": l.destination });
      const text = svg("text", { x: l.x, y: l.y + 4, "text-anchor": "middle" }, l.text);
      label.append(text);
      svgEl.append(label);
      const w = text.getComputedTextLength ? text.getComputedTextLength() : l.text.length * 6.5;
      label.insertBefore(svg("rect", { x: l.x - w / 2 - 6, y: l.y - 9, width: w + 12, height: 18, rx: 5 }), text);
    }
  }

  window.MeshGraph = { drawGraph, layout, byVersion, crossesDatacenters };
})();
