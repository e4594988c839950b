/*
 * The browser tracker, served minified at GET /analytics.js.
 *
 *   <script src="https://analytics.example.com/analytics.js"></script>
 *   <script>analytics.init({key: "ak_..."}); analytics.track("play", {song: "s1"});</script>
 *
 * init({endpoint, key}): endpoint defaults to the host the script came from; key is an
 * ingest key, sent in the query string (navigator.sendBeacon cannot set headers).
 * track(event, metadata) queues an event; identify(userId) sets the user_id of the events
 * tracked afterwards (until then an anonymous id kept in localStorage).
 *
 * Events wait a moment and go together to POST /track/batch; when the page is hidden or left,
 * what is left goes with navigator.sendBeacon. Each event carries an event_id, so an event
 * sent twice (a retry after a lost answer, a beacon racing a request) is stored once.
 */
(function (window) {
  "use strict";
  var ID_KEY = "analytics.user_id";
  var DELAY = 1000; // ms events wait for others to go with them
  var MAX_QUEUE = 1000; // an offline page keeps at most this many, dropping the oldest
  var MAX_BATCH = 100;
  var MAX_BYTES = 60000; // keepalive requests and beacons get 64 KiB between them
  var MAX_BACKOFF = 30000;

  var script = document.currentScript;
  var config = null;
  var queue = [];
  var userId = null;
  var timer = null;
  var sending = false;
  var backoff = 0;

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // randomUUID exists only on https pages; an http page builds a version 4 UUID itself.
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function remember(id) {
    try { window.localStorage.setItem(ID_KEY, id); } catch (e) { /* storage off: this page only */ }
  }

  function user() {
    if (!userId) {
      try { userId = window.localStorage.getItem(ID_KEY); } catch (e) { /* storage off */ }
      if (!userId) remember(userId = "anon-" + uuid());
    }
    return userId;
  }

  function url() {
    return config.endpoint + "/track/batch" + (config.key ? "?key=" + encodeURIComponent(config.key) : "");
  }

  function size(text) {
    return new TextEncoder().encode(text).length;
  }

  // The oldest events that fit in one request.
  function take() {
    var batch = [], bytes = 12;
    for (var i = 0; i < queue.length && batch.length < MAX_BATCH; i++) {
      var n = size(JSON.stringify(queue[i])) + 1;
      if (batch.length && bytes + n > MAX_BYTES) break;
      batch.push(queue[i]);
      bytes += n;
    }
    return batch;
  }

  function body(batch) {
    return JSON.stringify({ events: batch });
  }

  function remove(batch) {
    queue = queue.filter(function (e) { return batch.indexOf(e) < 0; });
  }

  function schedule(ms) {
    if (config && !timer && queue.length) timer = setTimeout(send, ms);
  }

  function send() {
    timer = null;
    if (sending || !queue.length) return;
    var batch = take();
    sending = true;
    // text/plain with the key in the query string is a simple request: no preflight.
    fetch(url(), { method: "POST", body: body(batch), keepalive: true,
                   headers: { "Content-Type": "text/plain" } })
      .then(function (r) {
        // A 4xx other than 429 will be refused again: retrying it would only block the queue.
        return r.status < 500 && r.status !== 429;
      }, function () { return false; })
      .then(function (delivered) {
        sending = false;
        if (delivered) {
          remove(batch);
          backoff = 0;
        } else {
          backoff = Math.min(MAX_BACKOFF, backoff ? backoff * 2 : 1000);
        }
        schedule(delivered ? 0 : backoff);
      });
  }

  // The page may never run a timer again: hand everything to the browser now.
  function beacon() {
    if (!config || !navigator.sendBeacon) return;
    while (queue.length) {
      var batch = take();
      if (!navigator.sendBeacon(url(), body(batch))) break;
      remove(batch);
    }
  }

  window.analytics = {
    init: function (options) {
      options = options || {};
      var endpoint = options.endpoint || (script && script.src ? new URL(script.src).origin : "");
      config = { endpoint: endpoint.replace(/\/+$/, ""), key: options.key || null };
      schedule(DELAY);
    },
    track: function (event, metadata) {
      queue.push({ event: String(event), user_id: user(), timestamp: new Date().toISOString(),
                   metadata: metadata || null, event_id: uuid() });
      if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
      schedule(DELAY);
    },
    identify: function (id) {
      remember(userId = String(id));
    },
    user: user,
    flush: function () {
      clearTimeout(timer);
      send();
    },
  };

  // A closing tab may run beforeunload and never get to pagehide: both send what is left.
  window.addEventListener("beforeunload", beacon);
  window.addEventListener("pagehide", beacon);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") beacon();
  });
  window.addEventListener("online", function () {
    backoff = 0;
    clearTimeout(timer);
    timer = null;
    schedule(0);
  });
})(window);
