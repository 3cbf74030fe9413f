// The live job page: draws one uPlot chart per metric group and redraws it from
// server-sent events (/ui/jobs/ID/events) as rounds close, without reloading.
"use strict";
(function () {
  const root = document.getElementById("job");
  let view = JSON.parse(root.dataset.job);
  const charts = {};
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

  function chartFor(spec) {
    const box = document.createElement("section");
    box.className = "chart";
    box.dataset.chart = spec.title;
    const title = document.createElement("h3");
    title.textContent = spec.title;
    box.appendChild(title);
    document.getElementById("charts").appendChild(box);
    const series = [{ label: "round" }].concat(spec.keys.map(function (key, i) {
      return { label: key, stroke: palette[i % palette.length], width: 2,
               dash: key === "epsilon_budget" ? [6, 4] : undefined, spanGaps: true };
    }));
    const plot = new uPlot({ width: 460, height: 220, series: series,
                             scales: { x: { time: false } },
                             axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}] },
                           [[]].concat(spec.keys.map(function () { return []; })), box);
    return { box: box, plot: plot, keys: spec.keys };
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "-" : String(text);
    return td;
  }

  function render() {
    view.charts.forEach(function (spec) {
      let c = charts[spec.title];
      if (c && c.keys.join() !== spec.keys.join()) { c.plot.destroy(); c.box.remove(); c = null; }
      if (!c) { c = charts[spec.title] = chartFor(spec); }
      c.plot.setData([view.x].concat(spec.keys.map(function (k) { return view.series[k]; })));
      c.box.dataset.points = String(view.x.length);
    });
    document.getElementById("charts").dataset.points = String(view.x.length);
    const status = document.getElementById("status");
    status.textContent = view.status;
    status.className = "badge " + view.status;
    document.getElementById("round").textContent = view.round;
    document.getElementById("progress").value = view.progress;
    document.getElementById("started").textContent = view.started;
    document.getElementById("finished").textContent = view.finished;
    document.getElementById("stage").textContent = view.current
      ? "round " + view.current.round + ": " + view.current.stage + " (" +
        view.current.reported + "/" + view.current.sampled + " reported)" : "";
    const reason = document.getElementById("reason");
    reason.textContent = view.reason || "";
    reason.hidden = !view.reason;
    const declined = document.getElementById("declined");
    declined.replaceChildren();
    Object.keys(view.declined).forEach(function (name) {
      const li = document.createElement("li");
      li.textContent = "member " + name + " declined: " + view.declined[name];
      declined.appendChild(li);
    });
    const ended = ["completed", "failed", "cancelled"].indexOf(view.status) >= 0;
    document.getElementById("cancel-form").hidden = ended;
    const body = document.querySelector("#rounds tbody");
    body.replaceChildren();
    view.table.forEach(function (r) {
      const tr = document.createElement("tr");
      [r.round, r.accuracy, r.loss, r.members, r.seconds, r.epsilon].forEach(function (v) {
        tr.appendChild(cell(v));
      });
      body.appendChild(tr);
    });
    root.dataset.status = view.status;
  }

  render();
  if (["completed", "failed", "cancelled"].indexOf(view.status) < 0) {
    const source = new EventSource("/ui/jobs/" + encodeURIComponent(view.id) + "/events");
    source.addEventListener("job", function (event) {
      view = JSON.parse(event.data);
      render();
      if (["completed", "failed", "cancelled"].indexOf(view.status) >= 0) { source.close(); }
    });
  }
  document.getElementById("cancel").addEventListener("click", function (event) {
    if (!window.confirm("Cancel job " + view.id + "?")) { event.preventDefault(); }
  });
})();
