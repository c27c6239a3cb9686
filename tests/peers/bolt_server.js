#!/usr/bin/env node
// SOFARPC (Bolt) demo provider on sofa-rpc-node 2.10.0 / sofa-bolt-node 2.0.1; no registry
// unless --zk is given.
//
//   node tests/peers/bolt_server.js --listen 127.0.0.1:PORT [--name NAME] [--app APP]
//        [--zk HOST:PORT[/ROOT]]
//
// Serves com.example.EchoService version 1.0 (hessian2, the library default codec):
//   echo(String) -> String          the argument
//   add(int a, int b) -> int        a + b
//   fail(String msg)                throws Error(msg) (the node server answers with Bolt status
//                                   SERVER_EXCEPTION and an RpcServerException body)
//   slow(int ms) -> int             waits ms, returns ms (a response later than the request's
//                                   Bolt timeout is never sent: sofa-rpc-node drops it)
//   echoobj(com.example.Pojo) -> com.example.Pojo  the argument {name, tags, nested} as a Pojo again
//   whoami() -> String              JSON of what this server saw about the caller:
//     {"app": requestProps.app (else header "app", else null),
//      "props": requestProps from the Hessian body (SofaRequest.requestProps),
//      "headers": the Bolt header map (SimpleMapSerializer; sofa-rpc-node itself skips it for
//                 hessian2, this peer parses it from the raw frame),
//      "target_app": SofaRequest.targetAppName, "service": SofaRequest.targetServiceUniqueName,
//      "method", "arg_sigs", "timeout_ms": Bolt timeout field,
//      "bolt": {"proto", "ver1", "type", "request_id", "codec", "switch"}, "remote": "ip:port",
//      "served_by": NAME}
//
// Binds only the given host (sofa-rpc-node itself listens on all interfaces; _startServer is
// overridden). Port 0 works: prints "listening on HOST:PORT" with the bound port, and nothing
// else on stdout. Library logs go to stderr (warn/error only). Exits 0 on SIGTERM / SIGINT,
// 2 on usage errors, 1 when it cannot listen (or, with --zk, cannot publish within 15 s).
//
// --zk HOST:PORT[/ROOT]: also register in ZooKeeper with sofa-rpc-node's own ZookeeperRegistry
// (unmodified): an EPHEMERAL node /sofa-rpc/com.example.EchoService/providers/<urlencoded
// bolt://HOST:PORT?...> (with /ROOT the library uses /ROOT/<interface>/providers instead),
// published with publishAddress = the --listen host (unless that is a wildcard address), so
// a loopback server publishes 127.0.0.1. "listening on" is printed only once the library's
// publish() has seen the node in its own subscription. SIGTERM unpublishes (deletes the node),
// then closes the ZooKeeper session.
'use strict';

const net = require('net');
const bolt = require('sofa-bolt-node');
const { RpcServer } = require('sofa-rpc-node').server;

const INTERFACE = 'com.example.EchoService';
const VERSION = '1.0';

function usage(message) {
  process.stderr.write(
    `${message ? `error: ${message}\n` : ''}` +
      'usage: node bolt_server.js --listen HOST:PORT [--name NAME] [--app APP] [--zk HOST:PORT[/ROOT]]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = { listen: null, name: 'bolt-provider', app: 'echo-server', zk: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    const key = { '--listen': 'listen', '--name': 'name', '--app': 'app', '--zk': 'zk' }[flag];
    if (!key) usage(`unknown argument ${flag}`);
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    args[key] = argv[++i];
  }
  if (!args.listen) usage('--listen is required');
  const m = /^(.+):(\d+)$/.exec(args.listen);
  if (!m) usage(`--listen needs HOST:PORT, got ${JSON.stringify(args.listen)}`);
  args.host = m[1].replace(/^\[(.*)\]$/, '$1');
  args.port = Number(m[2]);
  if (args.port > 65535) usage(`bad port ${m[2]}`);
  if (args.zk !== null && !/^[^/:]+:\d+(,[^/:]+:\d+)*(\/.*)?$/.test(args.zk)) {
    usage(`--zk needs HOST:PORT[/ROOT], got ${JSON.stringify(args.zk)}`);
  }
  return args;
}

// Library logger: keep stdout clean (only the "listening on" line goes there).
function makeLogger(name) {
  const out = level => (fmt, ...rest) => {
    const text = fmt instanceof Error ? fmt.stack : require('util').format(fmt, ...rest);
    process.stderr.write(`[${name}] ${level} ${text}\n`);
  };
  const noop = () => {};
  return { debug: noop, info: noop, warn: out('WARN'), error: out('ERROR') };
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

// sofa-bolt-node's protocol, except that decoded requests also carry `boltHeaders` and
// `boltFrame` (the library skips the header map of hessian2 requests).
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

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

function jsonSafe(value) {
  return JSON.parse(JSON.stringify(value === undefined ? null : value, (key, v) => {
    if (v instanceof Map) return Object.fromEntries(v);
    if (typeof v === 'bigint') return v.toString();
    return v;
  }));
}

function asPojo(value, seen) {
  if (value === null || value === undefined) return null;
  if (seen.has(value)) return seen.get(value);
  const out = { $class: 'com.example.Pojo', $: {} };
  seen.set(value, out);
  out.$.name = value.name == null ? null : String(value.name);
  out.$.tags = value.tags == null ? null : value.tags;
  out.$.nested = asPojo(value.nested, seen);
  return out;
}

function makeService(name) {
  return {
    async echo(text) {
      return text;
    },
    async add(a, b) {
      return { $class: 'int', $: (a + b) | 0 };
    },
    async fail(message) {
      const err = new Error(String(message));
      err.ignoreLog = true; // expected; keep stderr quiet
      throw err;
    },
    async slow(ms) {
      await sleep(Math.max(0, Number(ms) || 0));
      return { $class: 'int', $: ms | 0 };
    },
    // com.example.Pojo echoobj(com.example.Pojo): the same value back, as a Pojo again (sofa-rpc-node hands
    // the argument over as a plain object; shared lists stay shared)
    async echoobj(pojo) {
      return asPojo(pojo, new Map());
    },
    async whoami() {
      const req = this && this.req;
      const data = (req && req.data) || {};
      const props = data.requestProps == null ? null : jsonSafe(data.requestProps);
      const headers = (req && req.boltHeaders) || null;
      let app = null;
      if (props && typeof props === 'object' && props.app != null) app = String(props.app);
      else if (headers && headers.app != null) app = headers.app;
      return JSON.stringify({
        app,
        props,
        headers,
        target_app: data.targetAppName == null ? null : data.targetAppName,
        service: data.serverSignature || null,
        method: data.methodName || null,
        arg_sigs: data.methodArgSigs || [],
        timeout_ms: req && req.options ? req.options.timeout : null,
        bolt: (req && req.boltFrame) || null,
        remote: this && this.res ? this.res.remoteAddress : null,
        served_by: name,
      });
    },
  };
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

const WILDCARD_HOSTS = new Set([ '0.0.0.0', '::', '' ]);
const PUBLISH_TIMEOUT_MS = 15000;

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([ promise, timeout ]).finally(() => clearTimeout(timer));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const logger = makeLogger(args.name);
  const options = {
    appName: args.app,
    host: args.host,
    port: args.port,
    logger,
    protocol,
    // no registry (default): nothing is published, clients use a fixed address
  };
  let registry = null;
  if (args.zk !== null) {
    const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
    registry = new ZookeeperRegistry({ logger, address: args.zk, cluster: quietCluster(logger) });
    registry.on('error', err => logger.warn('registry error: %s', err && err.message));
    options.registry = registry;
    if (!WILDCARD_HOSTS.has(args.host)) options.publishAddress = args.host;
  }
  const server = new LocalRpcServer(options);
  // Business errors and unknown services are emitted as 'error' events; having a listener
  // also keeps sdk-base's default handler from dumping them to stderr.
  server.on('error', err => {
    if (err && err.code && /^E[A-Z]+$/.test(err.code)) logger.error(err);
  });
  server.addService({ interfaceName: INTERFACE, version: VERSION }, makeService(args.name));

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 2000).unref();
    // server.close() unpublishes first (deletes the ZooKeeper node when --zk is given)
    server.close()
      .then(() => registry && registry.close())
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
  if (registry !== null) {
    try {
      await withTimeout(registry.ready().then(() => server.publish()), PUBLISH_TIMEOUT_MS,
        `publishing to ZooKeeper ${args.zk}`);
    } catch (err) {
      process.stderr.write(`[${args.name}] cannot publish to ZooKeeper ${args.zk}: ${err.message}\n`);
      process.exit(1);
    }
  }
  const address = server._servers[0].address();
  const host = address.family === 'IPv6' || address.family === 6 ? `[${address.address}]` : address.address;
  process.stdout.write(`listening on ${host}:${address.port}\n`);
}

main().catch(err => {
  process.stderr.write(`bolt_server: ${err.stack || err}\n`);
  process.exit(1);
});
