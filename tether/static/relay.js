// The tether relay: one WebSocket to the laptop that served this page, one
// to the tether server, every message passed unchanged both ways
// (docs/tether.md, "Relay").  If either side closes, both are closed and
// reopened with backoff; the laptop's next hello resumes its session.
(function () {
  "use strict";
  var SUBPROTOCOL = "tether.v1";
  var params = new URLSearchParams(location.search);
  var state = {
    laptop: "down", server: "down", reconnects: 0, last: "",
    upMessages: 0, upBytes: 0, downMessages: 0, downBytes: 0
  };
  window.tetherRelay = state;
  var laptop = null, server = null, delay = 500, timer = null, dirty = false;

  function size(data) { return typeof data === "string" ? data.length : data.byteLength; }

  function render() {
    dirty = false;
    ["laptop", "server"].forEach(function (id) {
      var el = document.getElementById(id);
      el.textContent = state[id];
      el.className = state[id];
    });
    ["upMessages", "upBytes", "downMessages", "downBytes", "reconnects"].forEach(function (id) {
      document.getElementById(id).textContent = String(state[id]);
    });
    document.getElementById("last").textContent = state.last;
    document.title = "tether relay: laptop " + state.laptop + ", server " + state.server;
  }

  function changed() {
    if (!dirty) { dirty = true; setTimeout(render, 250); }
  }

  function laptopURL() {
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/tether/v1?key=" + encodeURIComponent(params.get("key") || "");
  }

  function serverURL() {
    if (params.get("server")) { return Promise.resolve(params.get("server")); }
    return fetch("config.json", { cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (c) { return c.server; });
  }

  function open(url) {
    var ws = new WebSocket(url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    return ws;
  }

  function teardown(code, reason) {
    [laptop, server].forEach(function (ws) {
      if (ws && ws.readyState <= 1) { ws.close(code, reason.slice(0, 120)); }
    });
    laptop = server = null;
    state.laptop = state.server = "down";
    state.last = reason;
    changed();
    if (timer === null) {
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    }
  }

  function connect() {
    timer = null;
    state.reconnects += 1;
    state.server = "connecting";
    changed();
    serverURL().then(function (url) {
      var s = open(url);
      server = s;
      s.onopen = function () {
        if (server !== s) { return; }
        state.server = "open";
        changed();
        openLaptop(s);
      };
      s.onmessage = function (ev) {
        if (server !== s || !laptop || laptop.readyState !== 1) { return; }
        laptop.send(ev.data);
        delay = 500;
        state.downMessages += 1;
        state.downBytes += size(ev.data);
        changed();
      };
      s.onclose = function (ev) {
        if (server === s) { teardown(4502, "server link closed (" + ev.code + " " + ev.reason + ")"); }
      };
    }, function (err) {
      teardown(1000, "cannot read config.json: " + err);
    });
  }

  function openLaptop(s) {
    var l = open(laptopURL());
    laptop = l;
    state.laptop = "connecting";
    l.onopen = function () {
      if (laptop === l) { state.laptop = "open"; changed(); }
    };
    l.onmessage = function (ev) {
      if (laptop !== l || s.readyState !== 1) { return; }
      s.send(ev.data);
      state.upMessages += 1;
      state.upBytes += size(ev.data);
      changed();
    };
    l.onclose = function (ev) {
      if (laptop === l) { teardown(1000, "laptop link closed (" + ev.code + " " + ev.reason + ")"); }
    };
  }

  state.reconnects = -1;
  connect();
}());
