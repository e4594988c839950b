/*
 * The dashboard: reads /metrics, /sessions and /active-users with the controls' parameters and
 * draws what they answer, unchanged. The controls live in the URL (shareable, reloadable); a
 * read key, when the server asks for one, lives in sessionStorage.
 */
(function () {
  "use strict";
  var KEY_STORE = "analytics.read_key";
  var PRESETS = { today: 1, "7d": 7, "30d": 30, "90d": 90 };
  var DEFAULTS = { range: "30d", group_by: "day", week_start: "monday" };
  // Okabe-Ito: told apart with every common colour-vision deficiency.
  var COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
  var $ = function (id) { return document.getElementById(id); };
  var form = $("controls");
  var charts = {};
  var shown = null; // the rows of the table, for the CSV download
  var generation = 0; // answers of an older load are dropped

  // The script runs before Chart.js (so that the reads start sooner); drawing waits for it.
  var chartLoaded = new Promise(function (resolve) {
    if (window.Chart) resolve();
    else document.addEventListener("DOMContentLoaded", resolve);
  });
  var browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  var numbers = new Intl.NumberFormat("en-US");

  // --- State: the URL is the truth -------------------------------------------------------------

  function localToday(zone) {
    // en-CA writes dates as YYYY-MM-DD.
    return new Intl.DateTimeFormat("en-CA", { timeZone: zone, year: "numeric", month: "2-digit",
                                              day: "2-digit" }).format(new Date());
  }

  function addDays(date, days) {
    var d = new Date(date + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() + days);
    return d.toISOString().slice(0, 10);
  }

  function readState() {
    var q = new URLSearchParams(location.search);
    var state = {
      range: q.get("range") || (q.get("start") ? "custom" : DEFAULTS.range),
      group_by: q.get("group_by") || DEFAULTS.group_by,
      tz: q.get("tz") || browserZone,
      week_start: q.get("week_start") || DEFAULTS.week_start,
      events: q.getAll("event"),
      user_id: q.get("user_id") || "",
    };
    if (state.range in PRESETS) {
      state.end = localToday(state.tz);
      state.start = addDays(state.end, 1 - PRESETS[state.range]);
    } else {
      state.range = "custom";
      state.end = q.get("end") || localToday(state.tz);
      state.start = q.get("start") || state.end;
    }
    return state;
  }

  function writeState(state) {
    var q = new URLSearchParams();
    q.set("range", state.range);
    if (state.range === "custom") { q.set("start", state.start); q.set("end", state.end); }
    q.set("group_by", state.group_by);
    q.set("tz", state.tz);
    if (state.week_start !== DEFAULTS.week_start) q.set("week_start", state.week_start);
    state.events.forEach(function (e) { q.append("event", e); });
    if (state.user_id) q.set("user_id", state.user_id);
    history.pushState(null, "", "?" + q.toString());
  }

  function stateFromControls(changed) {
    var range = form.range.value;
    if (changed === "start" || changed === "end") range = "custom";
    return {
      range: range, start: form.start.value, end: form.end.value, group_by: form.group_by.value,
      tz: form.tz.value, week_start: form.week_start.value, user_id: form.user_id.value.trim(),
      events: Array.prototype.filter.call(form.event.options, function (o) { return o.selected; })
        .map(function (o) { return o.value; }),
    };
  }

  function fillZones(selected) {
    var zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [];
    [selected, browserZone, "UTC"].forEach(function (z) { if (zones.indexOf(z) < 0) zones.push(z); });
    zones.sort();
    form.tz.replaceChildren.apply(form.tz, zones.map(function (z) { return new Option(z, z); }));
  }

  function showState(state) {
    if (form.tz.options.length === 0 || !Array.prototype.some.call(form.tz.options,
        function (o) { return o.value === state.tz; })) fillZones(state.tz);
    form.range.value = state.range;
    form.start.value = state.start;
    form.end.value = state.end;
    form.group_by.value = state.group_by;
    form.tz.value = state.tz;
    form.week_start.value = state.week_start;
    form.user_id.value = state.user_id;
  }

  // --- Reading the API -------------------------------------------------------------------------

  function params(state, extra) {
    var q = new URLSearchParams({ start_date: state.start, end_date: state.end, group_by: state.group_by,
                                  tz: state.tz, week_start: state.week_start, fill: "zero" });
    Object.keys(extra || {}).forEach(function (name) {
      [].concat(extra[name]).forEach(function (v) { q.append(name, v); });
    });
    return q.toString();
  }

  function read(path, query) {
    var headers = {};
    var key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = "Bearer " + key;
    return fetch(path + "?" + query, { headers: headers }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { status: response.status, body: body };
      });
    });
  }

  function refusal(answers) {
    for (var i = 0; i < answers.length; i++) {
      if (answers[i] && (answers[i].status === 401 || answers[i].status === 403)) return answers[i];
    }
    return null;
  }

  function askForKey(answer) {
    var message = $("key-message");
    var key = sessionStorage.getItem(KEY_STORE);
    if (answer.status === 403) {
      message.textContent = "This key was refused: " + answer.body.message + ". Enter a read key.";
    } else if (key) {
      message.textContent = "This key was refused: " + (answer.body.message || "Invalid API key") +
        ". Enter another read key.";
    } else {
      message.textContent = "This server needs a read key to show its numbers.";
    }
    message.className = key ? "refused" : "";
    $("key-form").hidden = false;
    $("key").focus();
  }

  function load() {
    var state = readState();
    showState(state);
    var mine = ++generation;
    $("status").textContent = "Loading…";
    $("error").hidden = true;
    document.body.dataset.state = "loading";
    var common = state.user_id ? { user_id: state.user_id } : {};
    var userQuery = state.events.length ? { event: state.events } : {};
    Promise.all([
      read("metrics", params(state, common)),
      read("sessions", params(state, common)),
      state.user_id ? Promise.resolve(null) : read("active-users", params(state, userQuery)),
      chartLoaded,
    ]).then(function (answers) {
      if (mine !== generation) return;
      var refused = refusal(answers);
      if (refused) {
        $("status").textContent = "";
        document.body.dataset.state = "key";
        askForKey(refused);
        return;
      }
      $("key-form").hidden = true;
      var failed = answers.slice(0, 2).filter(function (a) { return a.status !== 200; })[0];
      if (failed) {
        showError(failed.body.message || "The server answered " + failed.status);
        return;
      }
      draw(state, answers[0].body.data, answers[1].body.data, answers[2]);
      $("status").textContent = "Showing " + state.start + " to " + state.end + " (" + state.tz + ").";
      requestAnimationFrame(function () {
        if (mine !== generation) return;
        performance.mark("dashboard-drawn");
        document.body.dataset.state = "ready";
      });
    }, function () {
      if (mine === generation) showError("The server could not be reached.");
    });
  }

  function showError(text) {
    $("status").textContent = "";
    $("error").textContent = text;
    $("error").hidden = false;
    document.body.dataset.state = "error";
  }

  // --- Drawing ---------------------------------------------------------------------------------

  function eventNames(metrics) {
    var names = {};
    metrics.forEach(function (row) {
      Object.keys(row).forEach(function (k) { if (k !== "date") names[k] = true; });
    });
    return Object.keys(names).sort();
  }

  function fillEvents(all, selected) {
    var names = all.slice();
    selected.forEach(function (e) { if (names.indexOf(e) < 0) names.push(e); });
    names.sort();
    form.event.replaceChildren.apply(form.event, names.map(function (name) {
      var option = new Option(name, name);
      option.selected = selected.indexOf(name) >= 0;
      return option;
    }));
  }

  function usersNote(answer, state) {
    if (state.user_id) return "Active users are counted over every user: clear the user filter to see them.";
    if (answer.status === 404) return "Active users are not available on this server.";
    if (answer.status !== 200) return "Active users could not be read: " + (answer.body.message || answer.status);
    return null;
  }

  function draw(state, metrics, sessions, usersAnswer) {
    var names = eventNames(metrics);
    fillEvents(names, state.events);
    var shownNames = state.events.length ? state.events : names;
    var note = usersNote(usersAnswer || {}, state);
    var users = note ? null : usersAnswer.body.data;

    // One row per period label, in the API's order (every answer is filled with zeros).
    var rows = {};
    var labels = [];
    function row(date) {
      if (!rows[date]) { rows[date] = { date: date }; labels.push(date); }
      return rows[date];
    }
    metrics.forEach(function (m) {
      var r = row(m.date);
      shownNames.forEach(function (n) { r[n] = m[n] || 0; });
    });
    sessions.forEach(function (s) {
      var r = row(s.date);
      r.sessionCount = s.sessionCount; r.averageDuration = s.averageDuration; r.totalDuration = s.totalDuration;
    });
    (users || []).forEach(function (u) { row(u.date).users = u.users; });
    var ordered = labels.map(function (l) { return rows[l]; });

    var columns = [{ key: "date", title: "Period" }]
      .concat(shownNames.map(function (n) { return { key: n, title: n }; }))
      .concat([{ key: "sessionCount", title: "Sessions" },
               { key: "averageDuration", title: "Average session (s)" }]);
    if (users) columns.push({ key: "users", title: "Active users" });
    shown = { columns: columns, rows: ordered };

    var totalEvents = 0, totalSessions = 0, totalDuration = 0, peak = null;
    ordered.forEach(function (r) {
      shownNames.forEach(function (n) { totalEvents += r[n] || 0; });
      totalSessions += r.sessionCount || 0;
      totalDuration += r.totalDuration || 0;
      if (users && (peak === null || (r.users || 0) > peak)) peak = r.users || 0;
    });
    $("total-events").textContent = numbers.format(totalEvents);
    $("total-sessions").textContent = numbers.format(totalSessions);
    var average = totalSessions ? Math.round(totalDuration / totalSessions) : null;
    $("average-session").textContent = average === null ? "–" : numbers.format(average) + " s";
    $("average-session-readable").textContent = average === null ? "" : readable(average);
    $("peak-users").textContent = peak === null ? "–" : numbers.format(peak);

    drawTable(shown);
    var x = ordered.map(function (r) { return r.date; });
    drawChart("events", {
      type: "bar",
      data: { labels: x, datasets: shownNames.map(function (n, i) {
        return { label: n, data: ordered.map(function (r) { return r[n] || 0; }),
                 backgroundColor: COLOURS[i % COLOURS.length] };
      }) },
      options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
    });
    $("users-note").hidden = !note;
    $("users-note").textContent = note || "";
    $("users-box").hidden = !!note;
    if (users) {
      drawChart("users", {
        type: "line",
        data: { labels: x, datasets: [{ label: "Active users", borderColor: COLOURS[2],
          backgroundColor: COLOURS[2], data: ordered.map(function (r) { return r.users || 0; }) }] },
        options: { scales: { y: { beginAtZero: true } } },
      });
    } else {
      drawChart("users", null);
    }
    drawChart("sessions", {
      type: "bar",
      data: { labels: x, datasets: [
        { label: "Sessions", yAxisID: "count", backgroundColor: COLOURS[0],
          data: ordered.map(function (r) { return r.sessionCount || 0; }) },
        { label: "Average duration (s)", type: "line", yAxisID: "seconds", borderColor: COLOURS[5],
          backgroundColor: COLOURS[5], data: ordered.map(function (r) { return r.averageDuration || 0; }) },
      ] },
      options: { scales: { count: { position: "left", beginAtZero: true },
                           seconds: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } } } },
    });
  }

  // 500817 -> "5 d 19 h 6 min": the largest three units.
  function readable(seconds) {
    var units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
    var parts = [];
    units.forEach(function (unit) {
      var n = Math.floor(seconds / unit[1]);
      if ((n || parts.length) && parts.length < 3) parts.push(n + " " + unit[0]);
      seconds -= n * unit[1];
    });
    return parts.length ? parts.join(" ") : "0 s";
  }

  function drawChart(name, config) {
    if (charts[name]) { charts[name].destroy(); delete charts[name]; }
    if (!config) return;
    config.options.animation = false;
    config.options.maintainAspectRatio = false;
    config.options.interaction = { mode: "index", intersect: false };
    charts[name] = new Chart($(name + "-chart"), config);
  }

  function drawTable(data) {
    var head = document.createElement("tr");
    data.columns.forEach(function (c) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = c.title;
      head.appendChild(th);
    });
    $("table").tHead.replaceChildren(head);
    var body = document.createDocumentFragment();
    data.rows.forEach(function (r) {
      var tr = document.createElement("tr");
      data.columns.forEach(function (c, i) {
        var cell = document.createElement(i ? "td" : "th");
        if (!i) cell.scope = "row";
        cell.textContent = c.key in r ? r[c.key] : "";
        tr.appendChild(cell);
      });
      body.appendChild(tr);
    });
    $("table").tBodies[0].replaceChildren(body);
  }

  function csvField(value) {
    var text = value === undefined ? "" : String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function downloadCsv() {
    if (!shown) return;
    var lines = [shown.columns.map(function (c) { return csvField(c.title); }).join(",")];
    shown.rows.forEach(function (r) {
      lines.push(shown.columns.map(function (c) { return csvField(r[c.key]); }).join(","));
    });
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }));
    var state = readState();
    link.download = "analytics-" + state.start + "-" + state.end + "-" + state.group_by + ".csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 0);
  }

  // --- Wiring ----------------------------------------------------------------------------------

  form.addEventListener("change", function (event) {
    var state = stateFromControls(event.target.name);
    if (event.target.name === "range" && state.range in PRESETS) {
      state.end = localToday(state.tz);
      state.start = addDays(state.end, 1 - PRESETS[state.range]);
    }
    writeState(state);
    load();
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  $("key-form").addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    $("key").value = "";
    load();
  });
  $("csv").addEventListener("click", downloadCsv);
  window.addEventListener("popstate", load);
  load();
})();
