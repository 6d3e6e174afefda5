// Preloaded with `node -r ./loopback.js`: the emulators listen on every
// interface and have no host flag, so pin each listen() to 127.0.0.1.
// Also exit when the process that started us goes away, so a test run that
// dies never leaves an emulator behind.
'use strict';
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'object' && args[0] !== null) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' });
  } else if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    const port = args[0];
    const rest = args.slice(1).filter((a) => typeof a === 'function' || (typeof a === 'number' && a !== port));
    const cb = rest.find((a) => typeof a === 'function');
    return listen.call(this, { port: Number(port), host: '127.0.0.1' }, cb);
  }
  return listen.apply(this, args);
};
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 500).unref();
