#!/usr/bin/env node
// SOFARPC (Bolt) provider with the PROTOBUF codec (Bolt codec 11) on sofa-rpc-node 2.10.0 /
// sofa-bolt-node 2.0.1 / protobufjs, no registry.
//
//   node tests/peers/bolt_pb_server.js --listen 127.0.0.1:PORT [--name NAME] [--app APP]
//        [--proto PATH]
//
// Serves com.example.EchoService version 1.0 from interlink/demo/echo.proto. With codec 11 the
// Bolt content is the raw protobuf encoding of the single argument; sofa-bolt-node finds the
// message types from the Bolt HEADER keys sofa_head_target_service + sofa_head_method_name
// (both mandatory) and the protobufjs Root given as the server's `proto` option.
//   echo(EchoRequest) -> EchoReply      same message
//   add(AddRequest) -> AddReply         sum = a + b with Java int overflow
//   fail(EchoRequest)                   throws Error(message). The node server answers Bolt status
//                                       SERVER_EXCEPTION (0x0002), className SofaResponse, header
//                                       {sofa_head_response_error: "true"}, content = the bare
//                                       UTF-8 bytes of the message (NOT a protobuf string); the
//                                       node client reports "Error: <message>".
//   sleep(SleepRequest) -> SleepRequest waits ms, returns the request (a response later than the
//                                       request's Bolt timeout is never sent: sofa-rpc-node drops
//                                       it and logs "process timeout" on stderr)
//   whoami(EchoRequest) -> EchoReply    (not in echo.proto: added to the loaded Root by this peer
//                                       and by bolt_pb_client.js) message = JSON of what this
//                                       server saw:
//     {"app": Bolt header "app" (else null), "headers": the Bolt header map parsed from the raw
//      frame, "props": the requestProps sofa-rpc-node rebuilt from the header (rpc_trace_context.*
//      keys folded into a map), "service": header service (sofa_head_target_service fallback),
//      "target_service", "method": sofa_head_method_name, "target_app": sofa_head_target_app,
//      "codec": "protobuf", "timeout_ms": Bolt timeout field, "request": the decoded EchoRequest,
//      "bolt": {"proto","ver1","type","request_id","codec","switch"}, "remote": "ip:port",
//      "served_by": NAME}
// A request with another codec (e.g. hessian2) is answered with an error (each method throws
// "expected codec protobuf (11), got ..."). A method or service missing from the .proto, or a
// request without the sofa_head_target_service header, makes sofa-bolt-node's decoder throw:
// the connection is closed without a response. The node server dispatches on
// sofa_head_target_service (the `service` header is not used with protobuf). An empty content
// (valid protobuf: all fields default) reaches the methods as the default message (the library
// itself would pass no argument).
//
// Binds only the given host; port 0 works (prints the bound port). stdout carries only
// "listening on HOST:PORT"; library warnings go to stderr. Exits 0 on SIGTERM / SIGINT, 2 on
// usage errors, 1 when it cannot listen.
'use strict';

const net = require('net');
const path = require('path');
const util = require('util');
const protobuf = require('protobufjs');
const bolt = require('sofa-bolt-node');
const { RpcServer } = require('sofa-rpc-node').server;

const INTERFACE = 'com.example.EchoService';
const VERSION = '1.0';

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
      'usage: node bolt_pb_server.js --listen HOST:PORT [--name NAME] [--app APP] [--proto PATH]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = {
    listen: null,
    name: 'bolt-pb-provider',
    app: 'echo-server',
    proto: path.resolve(__dirname, '../../interlink/demo/echo.proto'),
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    const key = { '--listen': 'listen', '--name': 'name', '--app': 'app', '--proto': 'proto' }[flag];
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
  return args;
}

// Library logger: keep stdout clean (only the "listening on" line goes there).
function makeLogger(name) {
  const out = level => (fmt, ...rest) => {
    const text = fmt instanceof Error ? fmt.stack : util.format(fmt, ...rest);
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

// sofa-bolt-node's protocol, except that decoded requests also carry `boltHeaders` (the raw
// header map, before sofa-bolt-node folds rpc_trace_context.* keys away) and `boltFrame`.
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

// Plain object of a decoded protobufjs message (defaults included), or null.
function messageObject(msg) {
  if (msg == null) return null;
  if (typeof msg.toObject === 'function') return msg.toObject({ defaults: true, longs: String });
  return jsonSafe(msg);
}

function checkCodec(ctx) {
  const req = ctx && ctx.req;
  const codec = req && req.options ? req.options.codecType : null;
  if (codec !== 'protobuf') {
    const err = new Error(`expected codec protobuf (11), got ${codec}`);
    err.ignoreLog = true;
    throw err;
  }
}

function makeService(name, proto) {
  const service = proto.lookupService(INTERFACE);
  // sofa-bolt-node passes NO argument when the Bolt content is empty (contentLen 0), although
  // zero bytes are a valid protobuf message (all fields default: EchoRequest{message: ""},
  // AddRequest{0, 0}), which is what grpcio / Java write for such messages. Substitute the
  // default instance, as a Java SOFARPC server (ProtobufSerializer) would decode it.
  const argOf = (ctx, request) => {
    checkCodec(ctx);
    if (request != null) return request;
    const method = service.get(ctx.req.data.methodName);
    return method.resolvedRequestType.decode(Buffer.alloc(0));
  };
  return {
    async echo(request) {
      request = argOf(this, request);
      return { message: request.message };
    },
    async add(request) {
      request = argOf(this, request);
      return { sum: (request.a + request.b) | 0 };
    },
    async fail(request) {
      request = argOf(this, request);
      const err = new Error(String(request.message));
      err.ignoreLog = true; // expected; keep stderr quiet
      throw err;
    },
    async sleep(request) {
      request = argOf(this, request);
      await sleep(Math.max(0, Number(request.ms) || 0));
      return { ms: request.ms };
    },
    async whoami(request) {
      request = argOf(this, request);
      const req = this.req;
      const data = (req && req.data) || {};
      const headers = (req && req.boltHeaders) || {};
      const props = data.requestProps == null ? null : jsonSafe(data.requestProps);
      const pick = key => (headers[key] == null ? null : headers[key]);
      return {
        message: JSON.stringify({
          app: pick('app'),
          headers,
          props,
          service: headers.service != null ? headers.service : pick('sofa_head_target_service'),
          target_service: pick('sofa_head_target_service'),
          method: pick('sofa_head_method_name'),
          target_app: pick('sofa_head_target_app'),
          codec: req && req.options ? req.options.codecType : null,
          timeout_ms: req && req.options ? req.options.timeout : null,
          request: messageObject(request),
          bolt: (req && req.boltFrame) || null,
          remote: this.res ? this.res.remoteAddress : null,
          served_by: name,
        }),
      };
    },
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const logger = makeLogger(args.name);
  let proto;
  try {
    proto = loadProto(args.proto, INTERFACE);
  } catch (err) {
    usage(`cannot load ${args.proto}: ${err.message}`);
  }
  const server = new LocalRpcServer({
    appName: args.app,
    host: args.host,
    port: args.port,
    logger,
    protocol,
    proto, // protobufjs Root: sofa-bolt-node looks the method types up in it
    codecType: 'protobuf', // what a registry would advertise (serialization=protobuf)
    // no registry: nothing is published, clients use a fixed address
  });
  server.on('error', err => {
    if (err && err.code && /^E[A-Z]+$/.test(err.code)) logger.error(err);
  });
  server.addService({ interfaceName: INTERFACE, version: VERSION }, makeService(args.name, proto));

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 2000).unref();
    server.close().then(() => process.exit(0), () => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  try {
    await server.start();
  } catch (err) {
    process.stderr.write(`[${args.name}] cannot listen on ${args.listen}: ${err.message}\n`);
    process.exit(1);
  }
  const address = server._servers[0].address();
  const host = address.family === 'IPv6' || address.family === 6 ? `[${address.address}]` : address.address;
  process.stdout.write(`listening on ${host}:${address.port}\n`);
}

main().catch(err => {
  process.stderr.write(`bolt_pb_server: ${err.stack || err}\n`);
  process.exit(1);
});
