#!/usr/bin/env node
// A steady-rate SOFARPC (Bolt) caller on sofa-rpc-node 2.10.0, for tests that need legit traffic
// flowing while something else happens (tests/hostile).
//
//   node tests/peers/bolt_load_client.js --target HOST:PORT [--rate N] [--timeout-ms N]
//        [--app APP] [--duration-ms N] [--prefix TEXT]
//
// Calls echo(String) of com.example.EchoService:1.0 (hessian2, Bolt V1) every 1000/N ms (default
// N = 10), each call with a unique argument "<prefix>-<n>" (default prefix "legit-bolt") and the
// per-call Bolt timeout --timeout-ms (default 2000); a call is ok only if the reply equals its
// argument. Calls are started on schedule whether or not earlier ones have finished.
//
// stdout, one JSON line each:
//   {"ready":true}                                   once the consumer is ready (first line)
//   {"n":N,"start_ms":EPOCH_MS,"ms":LATENCY,"ok":true}
//   {"n":N,"start_ms":..,"ms":..,"ok":false,"error":{"name","message","code"}}
//   {"done":true,"issued":I,"finished":F,"outstanding":O}   last line
// It stops issuing on SIGTERM / SIGINT, when stdin closes, or after --duration-ms; then waits for
// the calls in flight (each bounded by its timeout, plus 1 s), prints the "done" line and exits 0.
// Calls still unfinished then are counted in "outstanding" (they hung past timeout + 1 s).
// Exit 2 on usage errors, 1 on an internal error.
'use strict';

const { RpcClient } = require('sofa-rpc-node').client;
const bolt = require('./lib/bolt');
const cli = require('./lib/cli');

const usage = cli.makeUsage(
  'usage: node bolt_load_client.js --target HOST:PORT [--rate N] [--timeout-ms N] [--app APP]\n' +
    '       [--duration-ms N] [--prefix TEXT]\n',
);

function parseArgs(argv) {
  const raw = cli.assignFlags(argv, {
    '--target': 'target', '--rate': 'rate', '--timeout-ms': 'timeoutMs', '--app': 'app',
    '--duration-ms': 'durationMs', '--prefix': 'prefix',
  }, usage, { target: null, rate: '10', timeoutMs: '2000', app: 'order-app', durationMs: '0', prefix: 'legit-bolt' });
  if (!raw.target) usage('--target is required');
  if (!/^[^:]+:\d+$/.test(raw.target)) usage(`--target needs HOST:PORT, got ${JSON.stringify(raw.target)}`);
  return {
    target: raw.target,
    rate: cli.parseIntArg(usage, '--rate', raw.rate, 1, 1000),
    timeoutMs: cli.parseIntArg(usage, '--timeout-ms', raw.timeoutMs, 1, 600000),
    app: raw.app,
    durationMs: cli.parseIntArg(usage, '--duration-ms', raw.durationMs, 0, 3600000),
    prefix: raw.prefix,
  };
}

function line(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const logger = bolt.makeLogger('bolt_load_client');
  const client = new RpcClient({ logger, responseTimeout: args.timeoutMs });
  client.on('error', err => logger.warn('client error: %s', err && err.message));
  const consumer = client.createConsumer(Object.assign(
    { responseTimeout: args.timeoutMs, serverHost: args.target }, bolt.SERVICE,
  ));
  const requestProps = { service: `${bolt.SERVICE.interfaceName}:${bolt.SERVICE.version}`, app: args.app };
  await consumer.ready();
  line({ ready: true });

  let issued = 0;
  let finished = 0;
  let stopping = false;
  const interval = 1000 / args.rate;
  const t0 = Date.now();

  const callOne = n => {
    const arg = `${args.prefix}-${n}`;
    const startMs = Date.now();
    const started = process.hrtime.bigint();
    const elapsed = () => Number(process.hrtime.bigint() - started) / 1e6;
    consumer.invoke('echo', [ arg ], { responseTimeout: args.timeoutMs, requestProps: Object.assign({}, requestProps) })
      .then(result => {
        finished += 1;
        if (result === arg) {
          line({ n, start_ms: startMs, ms: elapsed(), ok: true });
        } else {
          line({ n, start_ms: startMs, ms: elapsed(), ok: false,
            error: { name: 'WrongReply', message: `got ${JSON.stringify(result)}`, code: null } });
        }
      }, err => {
        finished += 1;
        line({ n, start_ms: startMs, ms: elapsed(), ok: false, error: bolt.errorJson(err) });
      });
  };

  const finish = async () => {
    const waitUntil = Date.now() + args.timeoutMs + 1000;
    while (finished < issued && Date.now() < waitUntil) await cli.sleep(20);
    line({ done: true, issued, finished, outstanding: issued - finished });
    await Promise.race([ Promise.resolve(client.close()).catch(() => {}), cli.sleep(1000) ]);
    process.stdout.write('', () => process.exit(0));
  };

  const stop = () => { stopping = true; };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();

  // schedule by the clock (no drift): call n starts at t0 + n * interval
  while (!stopping) {
    if (args.durationMs > 0 && Date.now() - t0 >= args.durationMs) break;
    callOne(issued);
    issued += 1;
    const next = t0 + issued * interval;
    const wait = next - Date.now();
    if (wait > 0) await cli.sleep(wait);
  }
  await finish();
}

cli.run(main, 'bolt_load_client: internal error');
