/* meshcore dashboard: SVG helpers and time-series line charts (no libraries). */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes and children (strings become text nodes, never markup). */
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

/** Round numbers for an axis: 0 up to a "nice" maximum at or above max, in ticks steps. */
function niceScale(max, ticks) {
  if (!(max > 0)) return { max: 1, step: 1 / ticks };
  const raw = max / ticks;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return { max: step * ticks, step };
}

function clockLabel(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 5);
}

/**
 * Draw series [{name, color, points: [[unixTime, value], ...]}] into svgEl between from and to (unix times).
 * format(v) labels the y axis; a gap longer than gapSeconds breaks a line (no data is not zero).
 */
function drawLineChart(svgEl, series, { from, to, format, gapSeconds }) {
  const box = svgEl.getBoundingClientRect();
  const W = Math.max(260, Math.round(box.width || 360));
  const H = Math.max(120, Math.round(box.height || 170));
  const pad = { l: 52, r: 10, t: 8, b: 22 };
  svgEl.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svgEl.replaceChildren();
  let top = 0;
  for (const s of series) for (const [, v] of s.points) top = Math.max(top, v);
  const { max, step } = niceScale(top, 4);
  const x = (t) => pad.l + ((t - from) / Math.max(1, to - from)) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  for (let v = 0; v <= max + step / 2; v += step) {
    svgEl.append(svg("line", { class: "grid-line", x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v) }));
    svgEl.append(svg("text", { class: "axis", x: pad.l - 6, y: y(v) + 3.5, "text-anchor": "end" }, format(v)));
  }
  for (let i = 0; i <= 3; i++) {
    const t = from + ((to - from) * i) / 3;
    const anchor = i === 0 ? "start" : i === 3 ? "end" : "middle";
    svgEl.append(svg("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": anchor }, clockLabel(t)));
  }
  let drawn = 0;
  for (const s of series) {
    let run = [];
    const flush = () => {
      if (run.length === 1) {
        svgEl.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2.5, fill: s.color }));
      } else if (run.length > 1) {
        const line = svg("polyline", { class: "series", stroke: s.color, points: run.map((p) => p.join(",")).join(" ") });
        line.append(svg("title", {}, s.name));
        svgEl.append(line);
      }
      run = [];
    };
    let last = null;
    for (const [t, v] of s.points) {
      if (t < from) continue;
      if (last !== null && t - last > gapSeconds) flush();
      run.push([x(t).toFixed(1), y(v).toFixed(1)]);
      last = t;
      drawn++;
    }
    flush();
  }
  if (!drawn) {
    svgEl.append(svg("text", { class: "nodata", x: W / 2, y: H / 2, "text-anchor": "middle" },
      "no traffic in this range yet"));
  }
}

window.MeshCharts = { svg, drawLineChart, niceScale };
