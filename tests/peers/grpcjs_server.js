#!/usr/bin/env node
// Demo provider for com.example.EchoService on @grpc/grpc-js: the Node twin of
// interlink/demo/provider.py (same semantics, so e2e tests can run against either).
//
//   node tests/peers/grpcjs_server.js --listen 127.0.0.1:PORT [--name NAME] [--proto PATH]
//
// Prints "listening on HOST:PORT" (the bound port, so PORT 0 works) once bound; exits 0 on
// SIGTERM / SIGINT. Exit 2 on usage errors, 1 when it cannot listen.
'use strict';

const path = require('path');
const { grpc, channelOptions, loadPackage, remainingMs, serve } = require('./lib/grpc');
const cli = require('./lib/cli');

// Request metadata keys that are transport plumbing, left out of x-saw-keys (same list as
// interlink/demo/provider.py TRANSPORT_KEYS).
const TRANSPORT_KEYS = new Set([
  'grpc-accept-encoding', 'accept-encoding', 'user-agent', 'content-type', 'te', 'grpc-timeout',
]);

const usage = cli.makeUsage('usage: node grpcjs_server.js --listen HOST:PORT [--name NAME] [--proto PATH]\n');

function parseArgs(argv) {
  const args = cli.assignFlags(argv, { '--listen': 'listen', '--name': 'name', '--proto': 'proto' }, usage, {
    listen: null,
    name: 'grpcjs-provider',
    proto: path.resolve(__dirname, '../../interlink/demo/echo.proto'),
  });
  if (!args.listen) usage('--listen is required');
  return args;
}

function int32(n) {
  return n | 0;
}

function deadlineMs(call) {
  const ms = remainingMs(call);
  return ms === null ? 'none' : String(ms);
}

function echoTrailers(metadata) {
  const trailing = new grpc.Metadata();
  const keys = [];
  const all = Object.keys(metadata.toJSON());
  let callerApp = null;
  for (const key of all) {
    const values = metadata.get(key);
    if (key.startsWith('x-echo-')) {
      for (const value of values) trailing.add(key, value);
    }
    if (key === 'x-interlink-caller-app' && values.length > 0) callerApp = values[0];
    if (!key.startsWith(':') && !TRANSPORT_KEYS.has(key)) keys.push(key);
  }
  if (callerApp !== null) trailing.set('x-caller-app', callerApp);
  trailing.set('x-saw-keys', keys.sort().join(','));
  return trailing;
}

function makeHandlers(name) {
  return {
    echo(call, callback) {
      const initial = new grpc.Metadata();
      initial.set('x-served-by', name);
      call.sendMetadata(initial);
      callback(null, { message: call.request.message }, echoTrailers(call.metadata));
    },

    add(call, callback) {
      callback(null, { sum: int32(call.request.a + call.request.b) });
    },

    fail(call, callback) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: call.request.message });
    },

    sleep(call, callback) {
      const trailing = new grpc.Metadata();
      trailing.set('x-deadline-ms', deadlineMs(call));
      const ms = Math.max(0, call.request.ms);
      const timer = setTimeout(() => {
        call.removeListener('cancelled', onCancel);
        callback(null, { ms: call.request.ms }, trailing);
      }, ms);
      function onCancel() {
        clearTimeout(timer);
      }
      call.on('cancelled', onCancel);
    },

    async count(call) {
      const n = call.request.a;
      for (let i = 1; i <= n; i++) {
        if (call.cancelled) return;
        if (!call.write({ sum: i })) {
          await new Promise((resolve) => {
            const done = () => {
              call.removeListener('drain', done);
              call.removeListener('cancelled', done);
              resolve();
            };
            call.on('drain', done);
            call.on('cancelled', done);
          });
        }
      }
      if (!call.cancelled) call.end();
    },

    sum(call, callback) {
      let total = 0;
      call.on('data', (req) => {
        total = int32(total + req.a + req.b);
      });
      call.on('end', () => callback(null, { sum: total }));
      call.on('error', () => {});
    },

    chat(call) {
      call.on('data', (req) => call.write({ message: req.message }));
      call.on('end', () => call.end());
      call.on('error', () => {});
    },
  };
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const proto = loadPackage(args.proto);
  const server = new grpc.Server(channelOptions());
  server.addService(proto.com.example.EchoService.service, makeHandlers(args.name));

  const idx = args.listen.lastIndexOf(':');
  if (idx <= 0) usage(`--listen must be HOST:PORT, got ${args.listen}`);
  serve(server, args.listen, args.listen.slice(0, idx));
}

main();
