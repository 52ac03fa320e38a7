// tsunagu mesh dashboard: vanilla JS, no build step, nothing from a CDN.
//
// The server sends a `view` event per sample (mesh/observe/model.py, as JSON) and a `traces`
// event when spans arrived, over one EventSource (/api/events); everything below redraws
// from those. Elements carry stable ids and data attributes for tests and for people:
//   [data-service="inventory"]                 a service's node in the topology
//   [data-instance="<id>"][data-health="..."]  one instance in the topology
//   [data-edge="gateway->inventory"] .rps      an edge's calls/s (also .success .p50 .p99)
//   [data-trace="<trace id>"]                  a row of the recent traces list
//   #waterfall .wf-row[data-span="<span id>"]  a span of the open trace (.attempt: one
//                                              attempt of a retried or failed-over call)
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const GRPC_CODES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
  "UNAUTHENTICATED",
];

const state = {
  view: null,
  traces: [],
  notable: [],       // the newest traces with an error or a retried attempt
  openTrace: null,   // trace id shown in the waterfall
  openSpans: -1,     // its span count when fetched (refetched when more arrive)
  selectedSpan: null,
  hoveringTraces: false,
};

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

const fmt = {
  rps(v) { return v === null || v === undefined ? "–" : v >= 100 ? v.toFixed(0) : v.toFixed(1); },
  pct(v) {
    if (v === null || v === undefined) return "–";
    const p = v * 100;
    return (p >= 99.95 ? "100" : p.toFixed(1)) + "%";
  },
  ms(v) { return v === null || v === undefined ? "–" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); },
  age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return seconds.toFixed(0) + " s";
    if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  },
  clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  },
};

function idle(golden) {
  return !(golden.requests_per_second > 0) && golden.p50_ms === null && golden.success_rate === null;
}

function successClass(rate) {
  if (rate === null || rate === undefined) return "";
  if (rate < 0.9) return "bad";
  if (rate < 0.99) return "meh";
  return "";
}

function serviceColour(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 48%, 42%)`;
}

function healthCounts(instances) {
  const counts = {};
  for (const i of instances) counts[i.health] = (counts[i.health] || 0) + 1;
  return counts;
}

// ---------- topology ----------

const NODE_W = 200;
const GAP_X = 190;
const GAP_Y = 22;
const INST = 14;
const PER_ROW = 8;

function layers(names, edges) {
  const layer = Object.fromEntries(names.map((n) => [n, 0]));
  const linked = new Set();
  for (const e of edges) { linked.add(e.source); linked.add(e.target); }
  // Longest path from the callers, capped so a cycle cannot grow without end.
  for (let round = 0; round < names.length; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.source === e.target || !(e.source in layer) || !(e.target in layer)) continue;
      const next = Math.min(layer[e.source] + 1, names.length - 1);
      if (next > layer[e.target]) { layer[e.target] = next; moved = true; }
    }
    if (!moved) break;
  }
  // A service nobody calls yet stands beside the called ones, not with the callers.
  const hasCallers = edges.length > 0;
  for (const n of names) {
    if (!linked.has(n) && (hasCallers || n !== "gateway")) layer[n] = Math.max(layer[n], 1);
  }
  if (names.length && names.every((n) => layer[n] > 0)) for (const n of names) layer[n] -= 1;
  return layer;
}

function hostsOf(service) {
  const hosts = new Map();
  for (const inst of service.instances) {
    const key = inst.node || inst.address;
    if (!hosts.has(key)) hosts.set(key, []);
    hosts.get(key).push(inst);
  }
  return [...hosts.entries()].sort((a, b) => a[0].localeCompare(b[0]));
}

function nodeHeight(service) {
  let rows = 0;
  for (const [, insts] of hostsOf(service)) rows += Math.max(1, Math.ceil(insts.length / PER_ROW));
  return 44 + Math.max(1, rows) * 20;
}

function drawTopology(view) {
  const svg = document.getElementById("topology");
  const byName = new Map(view.services.map((sv) => [sv.name, sv]));
  for (const e of view.edges) {
    for (const n of [e.source, e.target]) {
      if (!byName.has(n)) byName.set(n, { name: n, instances: [], inbound: {}, unregistered: true });
    }
  }
  const names = [...byName.keys()].sort();
  const layer = layers(names, view.edges);
  const columns = [];
  for (const n of names) (columns[layer[n]] ||= []).push(n);
  for (let c = 0; c < columns.length; c++) columns[c] ||= [];  // no holes: map() would skip them
  const heights = columns.map((col) => (col || []).reduce((sum, n) => sum + nodeHeight(byName.get(n)) + GAP_Y, -GAP_Y));
  const tallest = Math.max(120, ...heights);
  const pos = new Map();
  columns.forEach((col, c) => {
    let y = 20 + (tallest - heights[c]) / 2;
    for (const n of col || []) {
      const height = nodeHeight(byName.get(n));
      pos.set(n, { x: 20 + c * (NODE_W + GAP_X), y, w: NODE_W, h: height, col: c });
      y += height + GAP_Y;
    }
  });
  const width = 40 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
  svg.setAttribute("width", String(Math.max(width, 400)));

  // Paths go under the nodes, labels over them: two groups per edge, the label's carries data-edge.
  const pathLayer = s("g", { class: "edge-paths" });
  const labelLayer = s("g", { class: "edge-labels" });
  const labels = [];
  // Each target's incoming edges end at spread points on its left side, callers in order.
  const incoming = new Map();
  for (const e of view.edges) {
    if (!incoming.has(e.target)) incoming.set(e.target, []);
    incoming.get(e.target).push(e);
  }
  for (const list of incoming.values()) list.sort((a, b) => pos.get(a.source).y - pos.get(b.source).y);
  for (const e of view.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    const siblings = incoming.get(e.target);
    const slot = siblings.indexOf(e) + 1;
    const x1 = a.x + a.w;
    const y1 = a.y + a.h / 2;
    const x2 = b.x;
    const y2 = b.y + (b.h * slot) / (siblings.length + 1);
    const dx = Math.max(60, Math.abs(x2 - x1) / 2);
    const d = `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
    const g = e.golden;
    const cls = ["edge", g.requests_per_second > 0 ? successClass(g.success_rate) : "idle"].join(" ").trim();
    const widthPx = 1.2 + Math.min(5, Math.log10(1 + g.requests_per_second) * 2);
    pathLayer.append(s("g", { class: cls, "data-edge-path": `${e.source}->${e.target}` },
      s("path", { d, "stroke-width": widthPx.toFixed(1), "marker-end": "url(#arrow)" })));
    // The label sits in the gap just before the target, on the curve where it can.
    const lx = x2 > x1 ? x2 - GAP_X / 2 : (x1 + x2) / 2;
    const ly = curveYAt(x1, y1, x1 + dx, y1, x2 - dx, y2, x2, y2, lx);
    const label = s("g", { class: "label" });
    labelLayer.append(s("g", {
      class: cls,
      "data-edge": `${e.source}->${e.target}`,
      "data-source": e.source,
      "data-target": e.target,
    }, label));
    labels.push({ label, lx, ly, g });
  }
  placeLabels(labels);
  const bottom = Math.max(tallest + 40, ...labels.map((item) => item.y + item.h + 8));
  const svgWidth = Math.max(width, 400);
  svg.setAttribute("height", String(bottom));
  svg.setAttribute("viewBox", `0 0 ${svgWidth} ${bottom}`);

  const nodes = s("g", { class: "nodes" });
  for (const n of names) nodes.append(drawNode(byName.get(n), pos.get(n)));
  const defs = s("defs", {},
    s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "9", markerHeight: "9", markerUnits: "userSpaceOnUse", orient: "auto" },
      s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#7d8ba5" })));
  svg.replaceChildren(defs, pathLayer, nodes, labelLayer);
}

function curveYAt(x0, y0, x1, y1, x2, y2, x3, y3, x) {
  // x(t) of these curves grows with t: bisect for the t where x(t) = x.
  let lo = 0, hi = 1;
  const at = (t, p0, p1, p2, p3) => {
    const u = 1 - t;
    return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3;
  };
  if (x3 <= x0) return at(0.5, y0, y1, y2, y3);
  for (let i = 0; i < 30; i++) {
    const mid = (lo + hi) / 2;
    if (at(mid, x0, x1, x2, x3) < x) lo = mid; else hi = mid;
  }
  return at((lo + hi) / 2, y0, y1, y2, y3);
}

function placeLabels(labels) {
  const LABEL_W = 158;
  for (const item of labels) item.h = idle(item.g) ? 18 : 32;
  // Labels in one gap are pushed apart vertically so none hides another.
  const byColumn = new Map();
  for (const item of labels) {
    const key = Math.round(item.lx);
    if (!byColumn.has(key)) byColumn.set(key, []);
    byColumn.get(key).push(item);
  }
  for (const list of byColumn.values()) {
    list.sort((a, b) => a.ly - b.ly);
    let floor = -Infinity;
    for (const item of list) {
      item.y = Math.max(item.ly - item.h / 2, floor);
      floor = item.y + item.h + 4;
    }
  }
  for (const item of labels) {
    const g = item.g;
    item.label.setAttribute("transform", `translate(${(item.lx - LABEL_W / 2).toFixed(1)},${item.y.toFixed(1)})`);
    if (item.h < 32) {
      // No call in the window: one short line, the same .rps element to read.
      item.label.append(
        s("rect", { width: 92, height: item.h }),
        s("text", { x: 6, y: 13 },
          s("tspan", { class: "rps", text: fmt.rps(g.requests_per_second) }),
          s("tspan", { class: "dim", text: " calls/s" })));
      continue;
    }
    item.label.append(
      s("rect", { width: LABEL_W, height: item.h }),
      s("text", { x: 6, y: 13 },
        s("tspan", { class: "rps", text: fmt.rps(g.requests_per_second) }),
        s("tspan", { class: "dim", text: " calls/s  " }),
        s("tspan", { class: `success ${successClass(g.success_rate)}`, text: fmt.pct(g.success_rate) })),
      s("text", { x: 6, y: 27 },
        s("tspan", { class: "dim", text: "p50 " }),
        s("tspan", { class: "p50", text: fmt.ms(g.p50_ms) }),
        s("tspan", { class: "dim", text: " / p99 " }),
        s("tspan", { class: "p99", text: fmt.ms(g.p99_ms) }),
        s("tspan", { class: "dim", text: " ms" })),
    );
  }
}

function drawNode(service, p) {
  const counts = healthCounts(service.instances);
  const passing = counts.passing || 0;
  const down = service.instances.length > 0 && passing === 0;
  const inbound = service.inbound || {};
  const g = s("g", {
    class: "node" + (down ? " down" : ""),
    "data-service": service.name,
    "data-passing": passing,
    "data-instances": service.instances.length,
    transform: `translate(${p.x},${p.y})`,
  });
  g.append(
    s("rect", { class: "box", width: p.w, height: p.h, rx: 6 }),
    s("rect", { x: 0, y: 0, width: 5, height: p.h, rx: 2, fill: serviceColour(service.name) }),
    s("text", { class: "name", x: 12, y: 18, text: service.name }),
    s("text", { class: "meta", x: p.w - 8, y: 18, "text-anchor": "end",
      text: service.unregistered ? "not in Consul" : `${passing}/${service.instances.length} passing` }),
    s("text", { class: "meta", x: 12, y: 34,
      text: inbound.requests_per_second !== undefined
        ? `${fmt.rps(inbound.requests_per_second)} calls/s · ${fmt.pct(inbound.success_rate)} · p99 ${fmt.ms(inbound.p99_ms)} ms`
        : "" }),
  );
  let y = 46;
  for (const [host, insts] of hostsOf(service)) {
    g.append(s("text", { class: "host", x: 12, y: y + 10, text: host.length > 16 ? host.slice(0, 15) + "…" : host }));
    insts.sort((a, b) => a.instance_id.localeCompare(b.instance_id));
    insts.forEach((inst, i) => {
      const x = 100 + (i % PER_ROW) * (INST + 4);
      const row = Math.floor(i / PER_ROW);
      const tip = `${inst.instance_id}\n${inst.address}:${inst.port} on ${inst.node}\nhealth: ${inst.health}` +
        (inst.scraped ? "" : `\n/metrics: ${inst.error || "not scraped"}`);
      g.append(s("rect", {
        class: "inst" + (inst.scraped ? "" : " unscraped"),
        "data-instance": inst.instance_id,
        "data-health": inst.health,
        "data-scraped": inst.scraped ? "yes" : "no",
        x, y: y + row * 20, width: INST, height: INST, rx: 3,
      }, s("title", { text: tip })));
    });
    y += Math.max(1, Math.ceil(insts.length / PER_ROW)) * 20;
  }
  return g;
}

// ---------- tables ----------

function cell(text, cls) { return h("td", { class: cls, text }); }

function goldenCells(g) {
  return [
    cell(fmt.rps(g.requests_per_second), "num rps"),
    cell(fmt.pct(g.success_rate), `num success ${successClass(g.success_rate)}`),
    cell(fmt.ms(g.p50_ms), "num p50"),
    cell(fmt.ms(g.p99_ms), "num p99"),
  ];
}

function emptyRow(columns, text) {
  return h("tr", {}, h("td", { colspan: columns, class: "empty", text }));
}

function drawServices(view) {
  const rows = view.services.map((sv) => {
    const counts = healthCounts(sv.instances);
    const pills = ["passing", "warning", "critical"].filter((k) => counts[k])
      .map((k) => h("span", { class: `pill ${k}`, text: `${counts[k]} ${k}` }));
    return h("tr", { "data-service-row": sv.name },
      h("td", {}, h("b", { text: sv.name })), h("td", {}, pills), ...goldenCells(sv.inbound));
  });
  document.querySelector("#services tbody").replaceChildren(...(rows.length ? rows : [emptyRow(6, "no service registered")]));

  const edges = [...view.edges].sort((a, b) => (a.source + a.target).localeCompare(b.source + b.target));
  const edgeRows = edges.map((e) => h("tr", { "data-edge-row": `${e.source}->${e.target}` },
    h("td", { text: `${e.source} → ${e.target}` }), ...goldenCells(e.golden)));
  document.querySelector("#edges tbody").replaceChildren(...(edgeRows.length ? edgeRows : [emptyRow(5, "no calls seen yet")]));

  const instRows = [];
  for (const sv of view.services) {
    for (const inst of [...sv.instances].sort((a, b) => a.instance_id.localeCompare(b.instance_id))) {
      instRows.push(h("tr", { "data-instance-row": inst.instance_id, "data-health": inst.health },
        h("td", { text: sv.name }),
        h("td", {}, h("code", { text: inst.instance_id })),
        h("td", { text: `${inst.address}:${inst.port}` }),
        h("td", { text: inst.node }),
        h("td", {}, h("span", { class: `pill ${inst.health}`, text: inst.health })),
        h("td", {}, inst.scraped
          ? `scraped (:${inst.metrics_port})`
          : h("span", { class: "error-text", text: inst.metrics_port ? (inst.error || "no answer") : "no metrics_port in Consul meta" }))));
    }
  }
  document.querySelector("#instances tbody").replaceChildren(...(instRows.length ? instRows : [emptyRow(6, "no instance registered")]));
}

function drawResilience(view) {
  const rows = [...view.resilience].sort((a, b) => (a.source + a.target).localeCompare(b.source + b.target)).map((r) => {
    const breakers = [
      ...r.open_breakers.map((b) => h("span", { class: "pill open", text: `open ${b || "service"}` })),
      ...r.half_open_breakers.map((b) => h("span", { class: "pill half-open", text: `half-open ${b || "service"}` })),
    ];
    const rate = (v, cls) => cell(v > 0 ? v.toFixed(2) : "0", `num ${v > 0 ? cls : ""}`);
    return h("tr", { "data-resilience": `${r.source}->${r.target}` },
      h("td", { text: `${r.source} → ${r.target}` }),
      h("td", {}, breakers.length ? breakers : h("span", { class: "empty", text: "closed" })),
      cell(String(r.ejected_endpoints), `num ${r.ejected_endpoints ? "bad" : ""}`),
      rate(r.ejections_per_second, "meh"),
      rate(r.retries_per_second, "meh"),
      rate(r.budget_exhausted_per_second, "bad"),
      rate(r.fail_fast_per_second, "bad"));
  });
  document.querySelector("#resilience tbody").replaceChildren(...(rows.length ? rows : [emptyRow(7, "no caller reports resilience metrics yet")]));
}

function drawSagas(view) {
  const box = document.getElementById("sagas");
  const sagas = view.sagas;
  if (!sagas) {
    box.replaceChildren(h("p", { class: "empty", text: "no instance exports saga metrics" }));
    return;
  }
  const states = Object.entries(sagas.in_flight_by_state).filter(([, n]) => n > 0).sort();
  const total = states.reduce((sum, [, n]) => sum + n, 0);
  box.replaceChildren(
    h("p", {}, h("b", { id: "sagas-total", text: String(total) }), " in flight  ",
      ...states.map(([name, n]) => h("span", { class: "pill state", "data-saga-state": name, text: `${name} ${n}` }))),
    h("p", {}, "oldest: ", h("b", { id: "sagas-oldest", text: fmt.age(sagas.oldest_age_seconds) }),
      " · compensations: ", h("b", { text: `${sagas.compensations_per_second.toFixed(2)}/s` })),
  );
}

function drawHeader(view) {
  const banner = document.getElementById("consul-error");
  banner.hidden = !view.consul_error;
  banner.textContent = view.consul_error ? `Consul: ${view.consul_error}` : "";
  document.getElementById("sampled-at").textContent = view.at ? `sampled ${fmt.clock(view.at * 1000)}` : "";
  document.getElementById("window").textContent = view.window_seconds
    ? `rates over ${view.window_seconds.toFixed(0)} s` : "rates from the next sample";
  document.body.dataset.version = view.version;
}

function drawView(view) {
  state.view = view;
  drawHeader(view);
  drawTopology(view);
  drawServices(view);
  drawResilience(view);
  drawSagas(view);
}

// ---------- traces ----------

function drawTraces(data) {
  if (data) {
    state.traces = data.traces;
    state.notable = data.notable;
    document.getElementById("traces-count").textContent =
      `${data.held} held (${data.notable_held} with errors or retries), newest first`;
  }
  if (state.hoveringTraces) return;
  const onlyNotable = document.getElementById("traces-interesting").checked;
  const shown = onlyNotable ? state.notable : state.traces;
  const rows = shown.map((t) => h("tr", {
    "data-trace": t.trace_id,
    class: t.trace_id === state.openTrace ? "selected" : "",
  },
  h("td", { text: fmt.clock(t.start_ns / 1e6) }),
  h("td", {}, h("span", { text: `${t.root_service} · ` }), h("code", { text: t.root })),
  h("td", { text: t.services.join(", ") }),
  cell(String(t.spans), "num"),
  cell(fmt.ms(t.duration_ms), "num"),
  h("td", {},
    t.errors ? h("span", { class: "pill error", text: `${t.errors} error${t.errors > 1 ? "s" : ""}` }) : null,
    t.attempts ? h("span", { class: "pill retry", text: `${t.attempts} attempts` }) : null)));
  document.querySelector("#traces tbody").replaceChildren(...(rows.length ? rows : [emptyRow(6, "no trace received yet (OTLP)")]));
  const open = [...state.traces, ...state.notable].find((t) => t.trace_id === state.openTrace);
  if (open && open.spans !== state.openSpans) openTrace(open.trace_id, false);
}

async function openTrace(traceId, scroll = true) {
  const response = await fetch(`/api/traces/${traceId}`);
  const card = document.getElementById("waterfall-card");
  if (!response.ok) {
    card.hidden = false;
    document.getElementById("waterfall-id").textContent = traceId;
    document.getElementById("waterfall").replaceChildren(h("p", { class: "empty", text: "this trace is no longer held" }));
    return;
  }
  const trace = await response.json();
  state.openTrace = traceId;
  state.openSpans = trace.spans.length;
  for (const row of document.querySelectorAll("#traces tbody tr")) {
    row.classList.toggle("selected", row.dataset.trace === traceId);
  }
  drawWaterfall(trace);
  card.hidden = false;
  if (scroll) card.scrollIntoView({ behavior: "smooth", block: "start" });
}

function spanTree(spans) {
  const byId = new Map(spans.map((sp) => [sp.span_id, sp]));
  const children = new Map();
  const roots = [];
  for (const sp of spans) {
    if (sp.parent_span_id && byId.has(sp.parent_span_id)) {
      if (!children.has(sp.parent_span_id)) children.set(sp.parent_span_id, []);
      children.get(sp.parent_span_id).push(sp);
    } else {
      roots.push(sp);
    }
  }
  const ordered = [];
  const walk = (sp, depth) => {
    ordered.push({ sp, depth });
    for (const child of (children.get(sp.span_id) || []).sort((a, b) => a.start_ns - b.start_ns)) walk(child, depth + 1);
  };
  for (const root of roots.sort((a, b) => a.start_ns - b.start_ns)) walk(root, 0);
  return { ordered, byId };
}

function spanLabel(sp, parent) {
  const at = sp.attributes;
  const attempt = at["mesh.attempt"];
  const code = at["rpc.grpc.status_code"];
  const codeName = code === undefined ? "" : (GRPC_CODES[code] || String(code));
  const endpoint = at["server.address"] !== undefined ? `${at["server.address"]}:${at["server.port"] ?? ""}` : "";
  // An attempt of a call that took several: its own row under the call.
  if (attempt !== undefined && parent && parent.kind === "CLIENT" && parent.attributes["mesh.attempt"] === undefined) {
    return { text: `attempt ${attempt} → ${endpoint} ${codeName}`, attempt: true };
  }
  let text = sp.name;
  if (endpoint) text += ` → ${endpoint}`;
  if (codeName && codeName !== "OK") text += ` ${codeName}`;
  return { text, attempt: false };
}

function drawWaterfall(trace) {
  const spans = trace.spans;
  const box = document.getElementById("waterfall");
  document.getElementById("waterfall-id").textContent = trace.trace_id;
  const sum = trace.summary;
  document.getElementById("waterfall-summary").textContent =
    `${sum.spans} spans · ${fmt.ms(sum.duration_ms)} ms · ${sum.services.join(", ")}` +
    (trace.dropped_spans ? ` · ${trace.dropped_spans} spans not kept` : "");
  if (!spans.length) { box.replaceChildren(); return; }
  const start = Math.min(...spans.map((sp) => sp.start_ns));
  const end = Math.max(...spans.map((sp) => sp.end_ns));
  const total = Math.max(1, end - start);
  const ticks = h("div", { class: "ticks" });
  for (let i = 0; i <= 4; i++) {
    ticks.append(h("span", {
      style: `left:${i * 25}%;transform:translateX(${i === 0 ? 0 : i === 4 ? -100 : -50}%)`,
      text: `${fmt.ms((total * i) / 4 / 1e6)} ms`,
    }));
  }
  const rows = [h("div", { class: "wf-axis" }, h("div", { text: "span" }), ticks)];
  const { ordered, byId } = spanTree(spans);
  for (const { sp, depth } of ordered) {
    const parent = byId.get(sp.parent_span_id);
    const label = spanLabel(sp, parent);
    const left = ((sp.start_ns - start) / total) * 100;
    const width = Math.max(0.2, ((sp.end_ns - sp.start_ns) / total) * 100);
    const row = h("div", {
      class: ["wf-row", label.attempt ? "attempt" : "", sp.status === "ERROR" ? "error" : "",
        sp.span_id === state.selectedSpan ? "selected" : ""].join(" ").trim(),
      "data-span": sp.span_id,
      "data-parent": sp.parent_span_id,
      "data-kind": sp.kind,
      "data-span-service": sp.service,
      "data-attempt": sp.attributes["mesh.attempt"],
      onclick: () => showSpan(sp),
    },
    h("div", { class: "wf-label", style: `padding-left:${depth * 14}px`, title: label.text },
      h("span", { class: "svc", style: `background:${serviceColour(sp.service)}`, text: sp.service }),
      label.text,
      h("span", { class: "kind", text: sp.kind.toLowerCase() })),
    h("div", { class: "wf-track" },
      // The duration is written after the bar, or inside a wide bar that ends near the edge,
      // or before a narrow one there: never past the track.
      h("div", {
        class: "wf-bar" + (left + width <= 82 ? "" : width >= 18 ? " text-inside" : " text-before"),
        style: `left:${left.toFixed(3)}%;width:${width.toFixed(3)}%`,
      },
        h("span", { text: `${fmt.ms(sp.duration_ms)} ms` }))));
    rows.push(row);
  }
  box.replaceChildren(...rows);
}

function showSpan(sp) {
  state.selectedSpan = sp.span_id;
  for (const row of document.querySelectorAll("#waterfall .wf-row")) {
    row.classList.toggle("selected", row.dataset.span === sp.span_id);
  }
  const detail = document.getElementById("span-detail");
  detail.hidden = false;
  detail.textContent = JSON.stringify({
    name: sp.name, service: sp.service, kind: sp.kind, span_id: sp.span_id, parent: sp.parent_span_id,
    duration_ms: sp.duration_ms, status: sp.status, status_message: sp.status_message || undefined,
    attributes: sp.attributes,
  }, null, 2);
}

// ---------- wiring ----------

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => { live.dataset.state = "live"; live.textContent = "live"; });
  events.addEventListener("error", () => { live.dataset.state = "lost"; live.textContent = "reconnecting…"; });
  events.addEventListener("view", (message) => drawView(JSON.parse(message.data)));
  events.addEventListener("traces", (message) => drawTraces(JSON.parse(message.data)));
}

function init() {
  const table = document.getElementById("traces");
  table.addEventListener("mouseenter", () => { state.hoveringTraces = true; });
  table.addEventListener("mouseleave", () => { state.hoveringTraces = false; drawTraces(null); });
  table.querySelector("tbody").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-trace]");
    if (row) openTrace(row.dataset.trace);
  });
  document.getElementById("traces-interesting").addEventListener("change", () => drawTraces(null));
  document.getElementById("waterfall-close").addEventListener("click", () => {
    state.openTrace = null;
    document.getElementById("waterfall-card").hidden = true;
    drawTraces(null);
  });
  connect();
}

document.addEventListener("DOMContentLoaded", init);
