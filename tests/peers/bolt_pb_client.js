#!/usr/bin/env node
// One-shot SOFARPC (Bolt) consumer with the PROTOBUF codec (Bolt codec 11) on sofa-rpc-node
// 2.10.0 / protobufjs, fixed address, no registry.
//
//   node tests/peers/bolt_pb_client.js --target HOST:PORT --case CASE [--app APP]
//        [--timeout-ms N] [--arg X ...] [--count N --concurrency C]
//        [--target-app NAME] [--prop KEY=VALUE ...] [--proto PATH]
//
// Calls com.example.EchoService:1.0 of interlink/demo/echo.proto (Bolt V1, as sofa-rpc-node
// always sends). Cases (default --arg values in brackets):
//   echo [hello] -> EchoRequest{message}   add [2 3] -> AddRequest{a, b}
//   fail [boom] -> EchoRequest{message}    sleep [100] -> SleepRequest{ms}
//   whoami [""] -> EchoRequest{message}    (whoami is not in echo.proto; both bolt_pb peers add
//                                           `rpc whoami (EchoRequest) returns (EchoReply)`)
//
// With codec protobuf sofa-bolt-node writes the Bolt header map {service,
// sofa_head_method_name, sofa_head_target_app ("" unless --target-app),
// sofa_head_target_service} plus the requestProps flattened with "." (string/number values).
// The caller app travels as requestProps.app, i.e. header "app" (default order-app); --prop
// adds requestProps entries (a KEY with dots, e.g. rpc_trace_context.sofaTraceId=X, is sent as
// that header key).
//
// Prints ONE JSON line on stdout:
//   {"ok":true,"case":"echo","result":{"message":"hello"},"elapsed_ms":N}
//     result = the reply message as a plain object with defaults ({"sum":5}, {"ms":100});
//     whoami adds "whoami": the server's JSON parsed.
//   {"ok":false,"case":"fail","error":{"name":...,"message":...,"code":...},"elapsed_ms":N}
//     code = sofa-rpc-node resultCode ("01" business/server error, "02" framework, "03" timeout,
//     "04" no provider) or a Node errno string, else null.
//   With --count N [--concurrency C] (default C = 1):
//   {"ok":true,"case":"echo","calls":N,"errors":E,"first_error":{...}|null,"concurrency":C,
//    "rps":R,"p50_ms":..,"p99_ms":..,"max_ms":..,"elapsed_ms":N}
// --timeout-ms is the per-call response timeout (Bolt timeout field; default 3000, > 0).
// Exit 0 whenever the scenario ran (the JSON says how it went), 2 on usage errors, 1 on an
// internal error.
'use strict';

const path = require('path');
const util = require('util');
const protobuf = require('protobufjs');
const bolt = require('sofa-bolt-node');
const { RpcClient } = require('sofa-rpc-node').client;

const CASES = [ 'echo', 'add', 'fail', 'sleep', 'whoami' ];
const SERVICE = { interfaceName: 'com.example.EchoService', version: '1.0' };
const DEFAULT_ARGS = {
  echo: [ 'hello' ], add: [ '2', '3' ], fail: [ 'boom' ], sleep: [ '100' ], whoami: [ '' ],
};
const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

// interlink/demo/echo.proto has no whoami: add `rpc whoami (EchoRequest) returns (EchoReply)` to
// the loaded Root (same message types, so the wire format is the one of echo).
function loadProto(file, serviceName) {
  const root = protobuf.loadSync(file);
  const service = root.lookupService(serviceName);
  if (!service.get('whoami')) {
    service.add(new protobuf.Method('whoami', 'rpc', 'EchoRequest', 'EchoReply'));
  }
  root.resolveAll();
  return root;
}

function usage(message) {
  process.stderr.write(
    `${message ? `error: ${message}\n` : ''}` +
      `usage: node bolt_pb_client.js --target HOST:PORT --case ${CASES.join('|')} [--app APP]\n` +
      '       [--timeout-ms N] [--arg X ...] [--count N [--concurrency C]]\n' +
      '       [--target-app NAME] [--prop KEY=VALUE ...] [--proto PATH]\n',
  );
  process.exit(2);
}

function parseIntArg(flag, text, min, max) {
  if (!/^-?\d+$/.test(String(text))) usage(`${flag} needs an integer, got ${JSON.stringify(text)}`);
  const n = Number(text);
  if (n < min || n > max) usage(`${flag} must be in [${min}, ${max}]`);
  return n;
}

function parseArgs(argv) {
  const args = {
    target: null, case: null, app: 'order-app', timeoutMs: 3000, args: [], count: null,
    concurrency: 1, targetApp: null, props: {},
    proto: path.resolve(__dirname, '../../interlink/demo/echo.proto'),
  };
  const flags = [
    '--target', '--case', '--app', '--timeout-ms', '--arg', '--count', '--concurrency',
    '--target-app', '--prop', '--proto',
  ];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    if (!flags.includes(flag)) usage(`unknown argument ${flag}`);
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    const value = argv[++i];
    switch (flag) {
      case '--target': args.target = value; break;
      case '--case': args.case = value; break;
      case '--app': args.app = value; break;
      case '--timeout-ms': args.timeoutMs = parseIntArg(flag, value, 1, INT32_MAX); break;
      case '--arg': args.args.push(value); break;
      case '--count': args.count = parseIntArg(flag, value, 1, 10000000); break;
      case '--concurrency': args.concurrency = parseIntArg(flag, value, 1, 10000); break;
      case '--target-app': args.targetApp = value; break;
      case '--prop': {
        const eq = value.indexOf('=');
        if (eq <= 0) usage(`--prop needs KEY=VALUE, got ${JSON.stringify(value)}`);
        args.props[value.slice(0, eq)] = value.slice(eq + 1);
        break;
      }
      case '--proto': args.proto = value; break;
      default: usage(`unknown argument ${flag}`);
    }
  }
  if (!args.target) usage('--target is required');
  if (!/^[^:]+:\d+$/.test(args.target)) usage(`--target needs HOST:PORT, got ${JSON.stringify(args.target)}`);
  if (!args.case) usage('--case is required');
  if (!CASES.includes(args.case)) usage(`unknown case ${args.case}`);
  if (args.args.length === 0) args.args = DEFAULT_ARGS[args.case].slice();
  switch (args.case) {
    case 'echo': case 'fail': case 'whoami':
      if (args.args.length !== 1) usage(`case ${args.case} takes one --arg`);
      break;
    case 'add':
      if (args.args.length !== 2) usage('case add takes two --arg (a b)');
      args.args = args.args.map(x => parseIntArg('--arg', x, INT32_MIN, INT32_MAX));
      break;
    case 'sleep':
      if (args.args.length !== 1) usage('case sleep takes one --arg (ms)');
      args.args = args.args.map(x => parseIntArg('--arg', x, 0, INT32_MAX));
      break;
    default:
      break;
  }
  return args;
}

function makeLogger() {
  // stdout carries only the JSON line; library warnings go to stderr.
  const out = level => (fmt, ...rest) => {
    const text = fmt instanceof Error ? fmt.stack : util.format(fmt, ...rest);
    process.stderr.write(`[bolt_pb_client] ${level} ${text}\n`);
  };
  const noop = () => {};
  return { debug: noop, info: noop, warn: out('WARN'), error: out('ERROR') };
}

// The protobuf codec needs the protobufjs Root in the encoder (request types) and the decoder
// (response types); sofa-rpc-node's RpcClient passes no `proto` to its connections unless
// given connectionOpts, so inject it into the protocol (the README's protocol.setOptions does
// the same globally).
function protocolWith(proto) {
  return Object.assign({}, bolt, {
    encoder: options => bolt.encoder(Object.assign({}, options, { proto })),
    decoder: options => bolt.decoder(Object.assign({}, options, { proto })),
  });
}

function methodAndArg(args) {
  switch (args.case) {
    case 'echo': case 'fail': case 'whoami':
      return [ args.case, { message: String(args.args[0]) } ];
    case 'add': return [ 'add', { a: args.args[0], b: args.args[1] } ];
    case 'sleep': return [ 'sleep', { ms: args.args[0] } ];
    default: throw new Error(`unknown case ${args.case}`);
  }
}

function messageObject(msg) {
  if (msg == null) return null;
  if (typeof msg.toObject === 'function') return msg.toObject({ defaults: true, longs: String });
  return msg;
}

function errorJson(err) {
  if (err === null || typeof err !== 'object') return { name: 'Error', message: String(err), code: null };
  let code = null;
  if (err.resultCode !== undefined && err.resultCode !== null) code = String(err.resultCode);
  else if (err.code !== undefined && err.code !== null) code = String(err.code);
  return { name: err.name || 'Error', message: String(err.message), code };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[idx] * 1000) / 1000;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let proto;
  try {
    proto = loadProto(args.proto, SERVICE.interfaceName);
  } catch (err) {
    usage(`cannot load ${args.proto}: ${err.message}`);
  }
  const logger = makeLogger();
  const client = new RpcClient({ logger, responseTimeout: args.timeoutMs, protocol: protocolWith(proto) });
  client.on('error', err => logger.warn('client error: %s', err && err.message));
  const consumerOpts = Object.assign({
    serverHost: args.target, responseTimeout: args.timeoutMs, proto,
  }, SERVICE);
  if (args.targetApp !== null) consumerOpts.targetAppName = args.targetApp;
  const consumer = client.createConsumer(consumerOpts);
  const serviceId = `${SERVICE.interfaceName}:${SERVICE.version}`;
  // replaces the library default requestProps {service}: keep "service", add the caller app
  const requestProps = Object.assign({ service: serviceId, app: args.app }, args.props);
  const [ method, callArg ] = methodAndArg(args);
  const invoke = () => consumer.invoke(method, [ Object.assign({}, callArg) ], {
    codecType: 'protobuf',
    responseTimeout: args.timeoutMs,
    requestProps: Object.assign({}, requestProps),
  });

  const started = Date.now();
  let result;
  try {
    await consumer.ready();
  } catch (err) {
    result = { ok: false, case: args.case, error: errorJson(err) };
  }
  if (!result && args.count === null) {
    try {
      const value = messageObject(await invoke());
      result = { ok: true, case: args.case, result: value };
      if (args.case === 'whoami' && value && typeof value.message === 'string') {
        try { result.whoami = JSON.parse(value.message); } catch (_) { /* keep the raw string only */ }
      }
    } catch (err) {
      result = { ok: false, case: args.case, error: errorJson(err) };
    }
  } else if (!result) {
    const latencies = [];
    let errors = 0;
    let firstError = null;
    let next = 0;
    const worker = async () => {
      while (next < args.count) {
        next += 1;
        const t0 = process.hrtime.bigint();
        try {
          await invoke();
        } catch (err) {
          errors += 1;
          if (firstError === null) firstError = errorJson(err);
        }
        latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    };
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: Math.min(args.concurrency, args.count) }, worker));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    latencies.sort((a, b) => a - b);
    result = {
      ok: true,
      case: args.case,
      calls: latencies.length,
      errors,
      first_error: firstError,
      concurrency: args.concurrency,
      rps: Math.round((latencies.length / Math.max(seconds, 1e-9)) * 10) / 10,
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
      max_ms: percentile(latencies, 100),
    };
  }
  result.elapsed_ms = Date.now() - started;
  const line = `${JSON.stringify(result)}\n`;
  try {
    await Promise.race([ client.close(), new Promise(resolve => setTimeout(resolve, 1000)) ]);
  } catch (_) {
    // closing errors do not change the result
  }
  process.stdout.write(line, () => process.exit(0));
}

main().catch(err => {
  process.stderr.write(`bolt_pb_client: internal error: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
