#!/usr/bin/env node
// One-shot SOFARPC (Bolt) consumer on sofa-rpc-node 2.10.0: a fixed address (--target), or
// the providers found in ZooKeeper (--zk).
//
//   node tests/peers/bolt_client.js (--target HOST:PORT | --zk HOST:PORT[/ROOT]) --case CASE
//        [--app APP] [--timeout-ms N] [--arg X ...] [--count N --concurrency C]
//        [--target-app NAME] [--prop KEY=VALUE ...]
//
// Calls com.example.EchoService:1.0 with the default hessian2 codec (Bolt V1, as
// sofa-rpc-node always sends). Cases (default arguments in brackets):
//   echo [hello]   add [2 3]   fail [boom]   slow [100] (ms)   whoami   (no arguments)
//   unknown [hello]: method echo of com.example.Missing:1.0 (a service nobody serves)
//
// Caller identity: sofa-rpc-node has no consumer "appName" option for Bolt (consumer
// `targetAppName` is the *target* app). Like a Java SOFARPC consumer (requestProps["app"]),
// this client sends --app (default order-app) as requestProps.app; with hessian2 the node
// library puts requestProps only in the Hessian body (SofaRequest.requestProps), the Bolt
// header map stays {service}. --prop adds more requestProps entries (string values), and
// --target-app sets SofaRequest.targetAppName.
//
// Prints ONE JSON line on stdout:
//   {"ok":true,"case":"echo","result":...,"elapsed_ms":N}      (whoami adds "whoami": {...})
//   {"ok":false,"case":"fail","error":{"name":...,"message":...,"code":...},"elapsed_ms":N}
//     code = sofa-rpc-node resultCode ("01" business error, "02" server/framework error,
//     "03" timeout, "04" no provider/route) or a Node errno string, else null.
//   With --count N [--concurrency C] (default C = 1):
//   {"ok":true,"case":"echo","calls":N,"errors":E,"first_error":{...}|null,"rps":R,
//    "p50_ms":..,"p99_ms":..,"max_ms":..,"elapsed_ms":N}
// --timeout-ms is the per-call response timeout (Bolt timeout field; default 3000, > 0).
// --zk (instead of --target): sofa-rpc-node's own ZookeeperRegistry (unmodified) watches
// /sofa-rpc/<interface>/providers (/ROOT/<interface>/providers with a /ROOT) and keeps the
// providers that match interface, version 1.0 and group SOFA (the library's rules); the JSON
// line then also has "providers": ["HOST:PORT", ...], the address list the consumer used.
// No matching provider gives {"ok":false,...,"code":"04"} (RpcNoProviderError).
// Exit 0 whenever the scenario ran (the JSON says how it went), 2 on usage errors, 1 on an
// internal error.
'use strict';

const { RpcClient } = require('sofa-rpc-node').client;

const CASES = [ 'echo', 'add', 'fail', 'slow', 'whoami', 'echoobj', 'unknown' ];
const SERVICE = { interfaceName: 'com.example.EchoService', version: '1.0' };
const POJO = 'com.example.Pojo';
const MISSING = { interfaceName: 'com.example.Missing', version: '1.0' };
const DEFAULT_ARGS = {
  echo: [ 'hello' ], add: [ '2', '3' ], fail: [ 'boom' ], slow: [ '100' ], whoami: [], echoobj: [], unknown: [ 'hello' ],
};
const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

function usage(message) {
  process.stderr.write(
    `${message ? `error: ${message}\n` : ''}` +
      `usage: node bolt_client.js (--target HOST:PORT | --zk HOST:PORT[/ROOT]) --case ${CASES.join('|')} [--app APP]\n` +
      '       [--timeout-ms N] [--arg X ...] [--count N [--concurrency C]]\n' +
      '       [--target-app NAME] [--prop KEY=VALUE ...]\n',
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
    target: null, zk: null, case: null, app: 'order-app', timeoutMs: 3000, args: [], count: null,
    concurrency: 1, targetApp: null, props: {},
  };
  const flags = [
    '--target', '--zk', '--case', '--app', '--timeout-ms', '--arg', '--count', '--concurrency',
    '--target-app', '--prop',
  ];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    if (!flags.includes(flag)) usage(`unknown argument ${flag}`);
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    const value = argv[++i];
    switch (flag) {
      case '--target': args.target = value; break;
      case '--zk': args.zk = value; break;
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
      default: usage(`unknown argument ${flag}`);
    }
  }
  if (args.zk !== null) {
    if (args.target) usage('--target and --zk exclude each other');
    if (!/^[^/:]+:\d+(,[^/:]+:\d+)*(\/.*)?$/.test(args.zk)) {
      usage(`--zk needs HOST:PORT[/ROOT], got ${JSON.stringify(args.zk)}`);
    }
  } else {
    if (!args.target) usage('--target is required');
    if (!/^[^:]+:\d+$/.test(args.target)) usage(`--target needs HOST:PORT, got ${JSON.stringify(args.target)}`);
  }
  if (!args.case) usage('--case is required');
  if (!CASES.includes(args.case)) usage(`unknown case ${args.case}`);
  if (args.args.length === 0) args.args = DEFAULT_ARGS[args.case].slice();
  switch (args.case) {
    case 'echo': case 'fail': case 'unknown':
      if (args.args.length !== 1) usage(`case ${args.case} takes one --arg`);
      break;
    case 'add':
      if (args.args.length !== 2) usage('case add takes two --arg (a b)');
      args.args = args.args.map(x => parseIntArg('--arg', x, INT32_MIN, INT32_MAX));
      break;
    case 'slow':
      if (args.args.length !== 1) usage('case slow takes one --arg (ms)');
      args.args = args.args.map(x => parseIntArg('--arg', x, 0, INT32_MAX));
      break;
    case 'whoami': case 'echoobj':
      if (args.args.length !== 0) usage(`case ${args.case} takes no --arg`);
      break;
    default:
      break;
  }
  return args;
}

function makeLogger() {
  // stdout carries only the JSON line; library warnings go to stderr.
  const out = level => (fmt, ...rest) => {
    const text = fmt instanceof Error ? fmt.stack : require('util').format(fmt, ...rest);
    process.stderr.write(`[bolt_client] ${level} ${text}\n`);
  };
  const noop = () => {};
  return { debug: noop, info: noop, warn: out('WARN'), error: out('ERROR') };
}

// cluster-client (under sofa-rpc-node's ZookeeperRegistry) logs "... is closed." at INFO to
// stdout through its own console logger; hand it ours through the registry's `cluster` option
// (passed on to cluster-client for the registry and its ZooKeeper client) so stdout keeps
// carrying only this program's output.
function quietCluster(logger) {
  const path = require('path');
  const base = path.dirname(require.resolve('sofa-rpc-node/package.json'));
  const cluster = require(require.resolve('cluster-client', { paths: [ base ] }));
  return (clientClass, options) => cluster(clientClass, Object.assign({}, options, { logger }));
}

function methodAndArgs(args) {
  switch (args.case) {
    case 'echo': return [ 'echo', [ String(args.args[0]) ] ];
    case 'unknown': return [ 'echo', [ String(args.args[0]) ] ];
    case 'fail': return [ 'fail', [ String(args.args[0]) ] ];
    // explicit Java types: int add(int, int), int slow(int)
    case 'add': return [ 'add', args.args.map(n => ({ $class: 'int', $: n })) ];
    case 'slow': return [ 'slow', [ { $class: 'int', $: args.args[0] } ] ];
    case 'whoami': return [ 'whoami', [] ];
    // com.example.Pojo echoobj(com.example.Pojo): outer and inner share one tags list (a back-reference)
    case 'echoobj': {
      const tags = [ 'a', 'b' ];
      const inner = { $class: POJO, $: { name: 'inner', tags, nested: null } };
      return [ 'echoobj', [ { $class: POJO, $: { name: 'outer', tags, nested: inner } } ] ];
    }
    default: throw new Error(`unknown case ${args.case}`);
  }
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
  const logger = makeLogger();
  let registry = null;
  if (args.zk !== null) {
    const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
    registry = new ZookeeperRegistry({ logger, address: args.zk, cluster: quietCluster(logger) });
    registry.on('error', err => logger.warn('registry error: %s', err && err.message));
  }
  const clientOpts = { logger, responseTimeout: args.timeoutMs };
  if (registry !== null) clientOpts.registry = registry;
  const client = new RpcClient(clientOpts);
  client.on('error', err => logger.warn('client error: %s', err && err.message));
  const target = args.case === 'unknown' ? MISSING : SERVICE;
  const consumerOpts = Object.assign({ responseTimeout: args.timeoutMs }, target);
  if (registry === null) consumerOpts.serverHost = args.target;
  if (args.targetApp !== null) consumerOpts.targetAppName = args.targetApp;
  const consumer = client.createConsumer(consumerOpts);
  const serviceId = `${target.interfaceName}:${target.version}`;
  // replaces the library default requestProps {service}: keep "service", add the caller app
  const requestProps = Object.assign({ service: serviceId, app: args.app }, args.props);
  const [ method, callArgs ] = methodAndArgs(args);
  const invoke = () => consumer.invoke(method, callArgs, {
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
      const value = await invoke();
      result = { ok: true, case: args.case, result: value === undefined ? null : value };
      if (args.case === 'whoami' && typeof value === 'string') {
        try { result.whoami = JSON.parse(value); } catch (_) { /* keep the raw string only */ }
      }
      if (args.case === 'echoobj' && value && typeof value === 'object') {
        // the decoded reply keeps object identity: a back-reference decodes to the same list
        result.shared_tags = value.nested ? value.tags === value.nested.tags : null;
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
  if (registry !== null) {
    const group = consumer._addressGroup;
    const seen = (group && group.allAddressList) || [];
    result.providers = seen.map(address => address.host);
  }
  result.elapsed_ms = Date.now() - started;
  const line = `${JSON.stringify(result)}\n`;
  try {
    const closing = Promise.resolve(client.close()).then(() => registry && registry.close());
    await Promise.race([ closing, new Promise(resolve => setTimeout(resolve, 1000)) ]);
  } catch (_) {
    // closing errors do not change the result
  }
  process.stdout.write(line, () => process.exit(0));
}

main().catch(err => {
  process.stderr.write(`bolt_client: internal error: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
