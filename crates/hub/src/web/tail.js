// The live tail of a running job's page: follows the hub's server-sent events (web/tail.rs)
// and updates the step table, the logs and the status in place. Text is added as text nodes,
// never as HTML.
(function () {
  "use strict";
  var live = document.querySelector("[data-events]");
  if (!live || !window.EventSource) { return; }
  var source = null;
  var ended = false;

  function logs() { return Array.prototype.slice.call(document.querySelectorAll("pre.log")); }

  function findLog(step, stream) {
    return logs().filter(function (p) {
      return p.dataset.step === step && p.dataset.stream === stream;
    })[0];
  }

  function addLog(step, stream) {
    var section = document.createElement("section");
    section.className = "log";
    var title = document.createElement("h3");
    title.appendChild(document.createTextNode(step + " "));
    var which = document.createElement("span");
    which.className = "muted";
    which.textContent = stream;
    title.appendChild(which);
    var pre = document.createElement("pre");
    pre.className = "log";
    pre.dataset.step = step;
    pre.dataset.stream = stream;
    pre.dataset.offset = "0";
    section.appendChild(title);
    section.appendChild(pre);
    document.getElementById("logs").appendChild(section);
    return pre;
  }

  function setStatus(el, word) {
    el.textContent = word;
    el.className = "status status-" + word;
  }

  function stepRow(name) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("#steps tbody tr"));
    var row = rows.filter(function (r) { return r.dataset.step === name; })[0];
    if (row) { return row; }
    row = document.createElement("tr");
    row.dataset.step = name;
    ["", "step-status", "step-duration", "step-exit"].forEach(function (cls) {
      var td = document.createElement("td");
      if (cls) { td.className = cls; }
      row.appendChild(td);
    });
    row.firstChild.textContent = name;
    var status = document.createElement("span");
    row.querySelector(".step-status").appendChild(status);
    document.querySelector("#steps tbody").appendChild(row);
    return row;
  }

  function connect() {
    var query = new URLSearchParams();
    logs().forEach(function (p) {
      query.append("s", p.dataset.stream + ":" + p.dataset.offset + ":" + p.dataset.step);
    });
    source = new EventSource(live.dataset.events + "?" + query.toString());
    source.addEventListener("log", function (e) {
      var d = JSON.parse(e.data);
      var pre = findLog(d.step, d.stream) || addLog(d.step, d.stream);
      // A piece from another position than where this log ends is stale; skip it.
      if (String(d.offset) !== pre.dataset.offset) { return; }
      pre.appendChild(document.createTextNode(d.text));
      pre.dataset.offset = String(d.next);
    });
    source.addEventListener("step", function (e) {
      var d = JSON.parse(e.data);
      var row = stepRow(d.name);
      setStatus(row.querySelector(".step-status span"), d.status);
      row.querySelector(".step-duration").textContent = d.duration;
      row.querySelector(".step-exit").textContent = d.exit_code === null ? "" : String(d.exit_code);
    });
    source.addEventListener("job", function (e) {
      var d = JSON.parse(e.data);
      setStatus(document.getElementById("job-status"), d.status);
      document.getElementById("job-state").textContent = d.state;
      if (d.state === "finished") {
        var pending = document.getElementById("job-pending");
        if (pending) { pending.textContent = "Finished: " + d.status + "."; }
        var summary = document.getElementById("job-summary");
        summary.textContent = d.summary;
        summary.hidden = d.summary === "";
      }
    });
    source.addEventListener("end", function () {
      ended = true;
      source.close();
      live.textContent = "The run is over.";
    });
    source.onerror = function () {
      // Reconnect from where the logs end now, not from where they ended at the first connect.
      source.close();
      if (!ended) { window.setTimeout(connect, 2000); }
    };
  }

  connect();
})();
