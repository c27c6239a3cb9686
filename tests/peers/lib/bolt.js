// What the SOFA Bolt peers (bolt_*.js, on sofa-rpc-node 2.10.0 / sofa-bolt-node 2.0.1) share:
// the library logger, the Bolt header map read from the raw request frame, a server that binds
// only the given host, sofa-rpc-node's ZookeeperRegistry with cluster-client kept off stdout,
// and the consumer side's arguments, error JSON and call / load loop.
'use strict';

const net = require('net');
const util = require('util');
const bolt = require('sofa-bolt-node');
const { RpcServer } = require('sofa-rpc-node').server;
const cli = require('./cli');

const SERVICE = { interfaceName: 'com.example.EchoService', version: '1.0' };

// Library logger: keep stdout clean (it carries only "listening on" or the JSON line); warnings
// and errors go to stderr as "[TAG] LEVEL text".
function makeLogger(tag) {
  const out = level => (fmt, ...rest) => {
    const text = fmt instanceof Error ? fmt.stack : util.format(fmt, ...rest);
    process.stderr.write(`[${tag}] ${level} ${text}\n`);
  };
  const noop = () => {};
  return { debug: noop, info: noop, warn: out('WARN'), error: out('ERROR') };
}

// Map and bigint values as JSON can carry them.
function jsonSafe(value) {
  return JSON.parse(JSON.stringify(value === undefined ? null : value, (key, v) => {
    if (v instanceof Map) return Object.fromEntries(v);
    if (typeof v === 'bigint') return v.toString();
    return v;
  }));
}

// ---- Bolt header map, read from the raw request frame --------------------------------------

function decodeHeaderMap(buf) {
  // SOFA SimpleMapSerializer: (int32 keyLen, key, int32 valLen, value)*; -1 = null.
  const map = {};
  let off = 0;
  const str = () => {
    const len = buf.readInt32BE(off);
    off += 4;
    if (len < 0) return null;
    const s = buf.toString('utf8', off, off + len);
    off += len;
    return s;
  };
  try {
    while (off + 8 <= buf.length) {
      const key = str();
      const value = str();
      if (key !== null) map[key] = value;
    }
  } catch (err) {
    map['<decode error>'] = err.message;
  }
  return map;
}

// Returns {frame info, headers} when buf starts with a complete RPC request frame, else null.
function peekRequest(buf) {
  if (!buf || buf.length < 1) return null;
  let info;
  let fixed;
  let lens;
  if (buf[0] === 0x01) {
    if (buf.length < 22) return null;
    info = {
      proto: 1, ver1: null, type: buf[1], cmdcode: buf.readInt16BE(2),
      request_id: buf.readInt32BE(5), codec: buf[9], switch: null,
    };
    fixed = 22;
    lens = [ buf.readInt16BE(14), buf.readInt16BE(16), buf.readInt32BE(18) ];
  } else if (buf[0] === 0x02) {
    if (buf.length < 24) return null;
    info = {
      proto: 2, ver1: buf[1], type: buf[2], cmdcode: buf.readInt16BE(3),
      request_id: buf.readInt32BE(6), codec: buf[10], switch: buf[11],
    };
    fixed = 24;
    lens = [ buf.readInt16BE(16), buf.readInt16BE(18), buf.readInt32BE(20) ];
  } else {
    return null;
  }
  if ((info.type !== 1 && info.type !== 2) || info.cmdcode !== 1) return null;
  const [ classLen, headerLen, contentLen ] = lens;
  if (buf.length < fixed + classLen + headerLen + contentLen) return null;
  const start = fixed + classLen;
  return { info, headers: decodeHeaderMap(buf.subarray(start, start + headerLen)) };
}

// sofa-bolt-node's protocol, except that decoded requests also carry `boltHeaders` (the raw
// header map: the library skips it for hessian2 and folds rpc_trace_context.* keys away for
// protobuf) and `boltFrame` (proto, ver1, type, request_id, codec, switch).
const protocol = Object.assign({}, bolt, {
  decoder(options) {
    const decoder = bolt.decoder(options);
    const decodeOne = decoder._decode;
    const emit = decoder.emit;
    let peeked = null;
    decoder._decode = function() {
      peeked = peekRequest(this._buf);
      try {
        return decodeOne.call(this);
      } finally {
        peeked = null;
      }
    };
    decoder.emit = function(event, obj, ...rest) {
      if (event === 'request' && peeked && obj && typeof obj === 'object') {
        obj.boltHeaders = peeked.headers;
        obj.boltFrame = peeked.info;
      }
      return emit.call(this, event, obj, ...rest);
    };
    return decoder;
  },
});

// ---- server ---------------------------------------------------------------------------------

class LocalRpcServer extends RpcServer {
  // Same as RpcServer#_startServer, but listens on options.host only.
  _startServer(port) {
    const server = net.createServer();
    server.once('error', err => { this.emit('error', err); });
    server.on('connection', socket => { this._handleSocket(socket); });
    server.listen(port, this.options.host, () => {
      const realPort = server.address().port;
      if (port === this.publishPort && port === 0) {
        this.publishPort = realPort;
      }
    });
    return server;
  }

  // The implementation is called with `this` = this context (RpcService#invoke does
  // method.apply(ctx, args)); the default createContext returns null.
  createContext(req, res) {
    return { req, res };
  }
}

// A LocalRpcServer with the header-capturing protocol, serving `impl` as SERVICE.
function createServer(options, impl) {
  const server = new LocalRpcServer(Object.assign({ protocol }, options));
  // Business errors and unknown services are emitted as 'error' events; having a listener
  // also keeps sdk-base's default handler from dumping them to stderr.
  server.on('error', err => {
    if (err && err.code && /^E[A-Z]+$/.test(err.code)) options.logger.error(err);
  });
  server.addService(Object.assign({}, SERVICE), impl);
  return server;
}

// Starts the server; SIGTERM / SIGINT close it (then afterClose()) and exit 0, after 2 s at the
// latest. Exit 1 when it cannot listen. Once started (and afterStart() has resolved) prints
// "listening on HOST:PORT" with the bound port.
async function serve(server, args, { afterStart = null, afterClose = null } = {}) {
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 2000).unref();
    server.close()
      .then(() => afterClose && afterClose())
      .then(() => process.exit(0), () => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  try {
    await server.start();
  } catch (err) {
    process.stderr.write(`[${args.name}] cannot listen on ${args.listen}: ${err.message}\n`);
    process.exit(1);
  }
  if (afterStart) await afterStart();
  const address = server._servers[0].address();
  const host = address.family === 'IPv6' || address.family === 6 ? `[${address.address}]` : address.address;
  process.stdout.write(`listening on ${host}:${address.port}\n`);
}

// ---- ZooKeeper ------------------------------------------------------------------------------

function checkZk(usage, zk) {
  if (!/^[^/:]+:\d+(,[^/:]+:\d+)*(\/.*)?$/.test(zk)) {
    usage(`--zk needs HOST:PORT[/ROOT], got ${JSON.stringify(zk)}`);
  }
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

// sofa-rpc-node's own ZookeeperRegistry (unmodified) at HOST:PORT[/ROOT].
function zookeeperRegistry(address, logger) {
  const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
  const registry = new ZookeeperRegistry({ logger, address, cluster: quietCluster(logger) });
  registry.on('error', err => logger.warn('registry error: %s', err && err.message));
  return registry;
}

// ---- protobuf codec -------------------------------------------------------------------------

// interlink/demo/echo.proto has no whoami: add `rpc whoami (EchoRequest) returns (EchoReply)` to
// the loaded Root (same message types, so the wire format is the one of echo).
function loadEchoProto(file) {
  const protobuf = require('protobufjs');
  const root = protobuf.loadSync(file);
  const service = root.lookupService(SERVICE.interfaceName);
  if (!service.get('whoami')) {
    service.add(new protobuf.Method('whoami', 'rpc', 'EchoRequest', 'EchoReply'));
  }
  root.resolveAll();
  return root;
}

// ---- consumer -------------------------------------------------------------------------------

// Checks (and converts) the --arg values of a case by what it takes: 'text' one string, 'ints'
// two int32 (a b), 'ms' one int >= 0, 'none' nothing.
function checkCaseArgs(args, usage, takes) {
  const n = args.args.length;
  switch (takes) {
    case 'text':
      if (n !== 1) usage(`case ${args.case} takes one --arg`);
      break;
    case 'ints':
      if (n !== 2) usage(`case ${args.case} takes two --arg (a b)`);
      args.args = args.args.map(x => cli.parseIntArg(usage, '--arg', x, cli.INT32_MIN, cli.INT32_MAX));
      break;
    case 'ms':
      if (n !== 1) usage(`case ${args.case} takes one --arg (ms)`);
      args.args = args.args.map(x => cli.parseIntArg(usage, '--arg', x, 0, cli.INT32_MAX));
      break;
    case 'none':
      if (n !== 0) usage(`case ${args.case} takes no --arg`);
      break;
    default:
      throw new Error(`case ${args.case}: unknown argument kind ${takes}`);
  }
}

// Arguments of the Bolt clients: --target (or, with opts.zk, --zk), --case (a key of opts.cases,
// whose value says what --arg it takes, see checkCaseArgs; no --arg means
// opts.defaultArgs[case]), --app, --timeout-ms, --arg, --count, --concurrency, --target-app,
// --prop, and opts.more ({'--flag': key}, defaults in opts.initial).
function parseCallArgs(argv, usage, opts) {
  const args = Object.assign({
    target: null, zk: null, case: null, app: 'order-app', timeoutMs: 3000, args: [], count: null,
    concurrency: 1, targetApp: null, props: {},
  }, opts.initial);
  const set = {
    '--target': value => { args.target = value; },
    '--case': value => { args.case = value; },
    '--app': value => { args.app = value; },
    '--timeout-ms': value => { args.timeoutMs = cli.parseIntArg(usage, '--timeout-ms', value, 1, cli.INT32_MAX); },
    '--arg': value => { args.args.push(value); },
    '--count': value => { args.count = cli.parseIntArg(usage, '--count', value, 1, 10000000); },
    '--concurrency': value => { args.concurrency = cli.parseIntArg(usage, '--concurrency', value, 1, 10000); },
    '--target-app': value => { args.targetApp = value; },
    '--prop': value => {
      const [ key, text ] = cli.keyValue(usage, '--prop', value);
      args.props[key] = text;
    },
  };
  if (opts.zk) set['--zk'] = value => { args.zk = value; };
  for (const [ flag, key ] of Object.entries(opts.more || {})) set[flag] = value => { args[key] = value; };
  cli.eachFlag(argv, Object.keys(set), usage, (flag, value) => set[flag](value));
  if (args.zk !== null) {
    if (args.target) usage('--target and --zk exclude each other');
    checkZk(usage, args.zk);
  } else {
    if (!args.target) usage('--target is required');
    if (!/^[^:]+:\d+$/.test(args.target)) usage(`--target needs HOST:PORT, got ${JSON.stringify(args.target)}`);
  }
  if (!args.case) usage('--case is required');
  if (!Object.keys(opts.cases).includes(args.case)) usage(`unknown case ${args.case}`);
  if (args.args.length === 0) args.args = opts.defaultArgs[args.case].slice();
  checkCaseArgs(args, usage, opts.cases[args.case]);
  return args;
}

// {name, message, code}: code = sofa-rpc-node resultCode, else a Node errno string, else null.
function errorJson(err) {
  if (err === null || typeof err !== 'object') return { name: 'Error', message: String(err), code: null };
  let code = null;
  if (err.resultCode !== undefined && err.resultCode !== null) code = String(err.resultCode);
  else if (err.code !== undefined && err.code !== null) code = String(err.code);
  return { name: err.name || 'Error', message: String(err.message), code };
}

// Waits for the consumer, then makes one call (the result is onValue(reply)) or, with --count,
// runs the load loop. A failure is {ok: false, case, error}.
async function callOrLoad(args, consumer, invoke, onValue) {
  const failed = err => ({ ok: false, case: args.case, error: errorJson(err) });
  try {
    await consumer.ready();
  } catch (err) {
    return failed(err);
  }
  if (args.count === null) {
    try {
      return onValue(await invoke());
    } catch (err) {
      return failed(err);
    }
  }
  const stats = await cli.loadLoop(invoke, args.count, args.concurrency, errorJson);
  return Object.assign({ ok: true, case: args.case }, stats);
}

// Adds elapsed_ms, closes (1 s at most; closing errors do not change the result), prints the
// JSON line and exits 0.
async function finish(result, started, close) {
  result.elapsed_ms = Date.now() - started;
  try {
    await Promise.race([ close(), new Promise(resolve => setTimeout(resolve, 1000)) ]);
  } catch (_) {
    // closing errors do not change the result
  }
  cli.printResult(result);
}

module.exports = {
  SERVICE,
  makeLogger,
  jsonSafe,
  decodeHeaderMap,
  peekRequest,
  protocol,
  LocalRpcServer,
  createServer,
  serve,
  checkZk,
  quietCluster,
  zookeeperRegistry,
  loadEchoProto,
  checkCaseArgs,
  parseCallArgs,
  errorJson,
  callOrLoad,
  finish,
};
