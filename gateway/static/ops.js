// The ops page: polls ops/data once a second and draws each chart it names with uPlot.
//
// ops/data answers {at, source, charts: [{id, title, unit, series: {label: value|null}}],
// processes: [...]} (gateway/ops.py). The series of a chart may change between polls (a
// process starts or stops): the chart is then rebuilt with the history it already has.
// window.ops exposes the page's state to the browser tests (tests/test_gateway_ops.py).
"use strict";

(function () {
  const POLL_MS = 1000;
  const KEEP = 300; // points per chart: five minutes at one poll a second
  const HEIGHT = 170;
  const COLORS = ["#2e90fa", "#f79009", "#12b76a", "#f04438", "#7a5af8", "#ee46bc", "#15b79e", "#667085"];

  const state = (window.ops = { polls: 0, failures: 0, status: "starting", last: null, cspViolations: [], charts: {} });
  document.addEventListener("securitypolicyviolation", (e) => {
    state.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
  });

  function setStatus(text, kind) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = `status ${kind}`;
  }

  function format(value, unit) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0";
    if (unit === "s" && Math.abs(value) < 1) return `${format(value * 1000)} ms`;
    const abs = Math.abs(value);
    if (abs >= 1000) return value.toFixed(0);
    if (abs >= 10) return value.toFixed(1);
    if (abs >= 0.01) return value.toFixed(2);
    return value.toExponential(1);
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // One chart's box and history; uPlot is created once its series are known.
  function newChart(spec) {
    const box = element("article", "chart");
    box.dataset.chart = spec.id;
    const title = element("h2", null, spec.title + " ");
    title.append(element("span", "unit", spec.unit ? `(${spec.unit})` : ""));
    const plot = element("div", "plot");
    const now = element("ul", "now");
    box.append(title, plot, now);
    document.getElementById("charts").append(box);
    return { box, plotBox: plot, now, times: [], columns: new Map(), labels: [], plot: null };
  }

  function width(chart) {
    return Math.max(280, chart.plotBox.clientWidth || chart.box.clientWidth - 24);
  }

  function rebuild(chart, spec, labels) {
    if (chart.plot) chart.plot.destroy();
    chart.labels = labels;
    const series = [{}].concat(labels.map((label, i) => ({
      label, stroke: color(i), width: 1.5, points: { show: false },
    })));
    const opts = {
      width: width(chart), height: HEIGHT, series,
      scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{}, { size: 64, values: (u, ticks) => ticks.map((v) => format(v, spec.unit)) }],
      // The figures are listed under the chart (showNow), with these colours.
      legend: { show: false },
    };
    chart.plot = new uPlot(opts, data(chart), chart.plotBox);
  }

  function data(chart) {
    return [chart.times].concat(chart.labels.map((label) => chart.columns.get(label)));
  }

  function record(chart, at, series) {
    chart.times.push(at);
    const labels = new Set([...chart.columns.keys(), ...Object.keys(series)]);
    for (const label of labels) {
      if (!chart.columns.has(label)) chart.columns.set(label, new Array(chart.times.length - 1).fill(null));
      const value = series[label];
      chart.columns.get(label).push(typeof value === "number" ? value : null);
    }
    if (chart.times.length > KEEP) {
      chart.times.shift();
      for (const column of chart.columns.values()) column.shift();
    }
    // A series gone from every kept point is dropped (a process that stopped five minutes ago).
    for (const [label, column] of chart.columns) {
      if (!(label in series) && column.every((v) => v === null)) chart.columns.delete(label);
    }
  }

  function color(index) {
    return COLORS[index % COLORS.length];
  }

  function showNow(chart, spec) {
    const items = Object.entries(spec.series).map(([label, value]) => {
      const li = element("li");
      const swatch = element("span", "swatch");
      swatch.style.backgroundColor = color(chart.labels.indexOf(label)); // CSSOM: allowed by the CSP
      li.append(swatch, `${label} `, element("b", null, format(value, spec.unit)));
      return li;
    });
    if (!items.length) items.push(element("li", "empty", spec.empty || "nothing to show yet"));
    chart.now.replaceChildren(...items);
  }

  function draw(spec, at) {
    let chart = state.charts[spec.id];
    if (!chart) chart = state.charts[spec.id] = newChart(spec);
    record(chart, at, spec.series);
    const labels = [...chart.columns.keys()].sort();
    if (!chart.plot || labels.join("\n") !== chart.labels.join("\n")) rebuild(chart, spec, labels);
    else chart.plot.setData(data(chart));
    showNow(chart, spec);
  }

  function showProcesses(processes) {
    const rows = processes.map((p) => {
      const tr = element("tr");
      tr.append(element("td", null, p.role), element("td", null, p.name),
        element("td", p.up ? null : "down", p.state), element("td", null, p.warning || ""));
      return tr;
    });
    if (!rows.length) {
      const tr = element("tr");
      const td = element("td", null, "no process registered");
      td.colSpan = 4;
      tr.append(td);
      rows.push(tr);
    }
    document.getElementById("processes").replaceChildren(...rows);
  }

  function render(snapshot) {
    for (const spec of snapshot.charts) draw(spec, snapshot.at);
    showProcesses(snapshot.processes);
    const when = new Date(snapshot.at * 1000).toLocaleTimeString();
    setStatus(`live · ${snapshot.source} · ${when}`, "ok");
  }

  async function poll() {
    try {
      const response = await fetch("ops/data", {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
      });
      if (response.status === 401 || response.status === 404) {
        // The session ended (12 h, or the token was rotated): polling again cannot help.
        state.status = "unauthorized";
        setStatus("not signed in: open this page again as /ops?token=<gateway.ops_token>", "error");
        return;
      }
      if (!response.ok) throw new Error(`ops/data answered ${response.status}`);
      const snapshot = await response.json();
      state.polls += 1;
      state.last = snapshot;
      state.status = "live";
      render(snapshot);
    } catch (error) {
      state.failures += 1;
      state.status = "failing";
      setStatus(`no data (${error.message}); retrying`, "error");
    }
    setTimeout(poll, POLL_MS);
  }

  window.addEventListener("resize", () => {
    for (const chart of Object.values(state.charts)) {
      if (chart.plot) chart.plot.setSize({ width: width(chart), height: HEIGHT });
    }
  });
  poll();
})();
