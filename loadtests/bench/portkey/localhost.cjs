// Preloaded (node -r) into Portkey's gateway by loadtests/bench_gateway.py: its start-server.js
// listens on the port given by --port=N but passes no host, so Node would bind every interface.
// The benchmark's servers listen on 127.0.0.1 only; this supplies that host when none is given.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number") {
    if (args[1] === undefined) args[1] = "127.0.0.1";
    else if (typeof args[1] === "function") args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
