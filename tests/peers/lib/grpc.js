// What the @grpc/grpc-js peers (grpcjs_*.js, wrapper_*.js) share: message size limits,
// metadata to and from the command line / JSON, serving until SIGTERM, settling a call, and for
// Triple wrapper mode the wrapper messages and one-value Hessian coding in either dialect.
'use strict';

const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

// Options of a grpc.Server / grpc.Client: 8 MiB messages both ways.
function channelOptions() {
  return {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  };
}

// The gRPC package object of a .proto file (@grpc/proto-loader, fields as written).
function loadPackage(file) {
  const protoLoader = require('@grpc/proto-loader');
  const definition = protoLoader.loadSync(file, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

// grpc.Metadata of [key, value] pairs (values of -bin keys given base64); a bad pair is a usage
// error "bad metadata KEY: ...".
function buildMetadata(pairs, usage) {
  const md = new grpc.Metadata();
  for (const [ key, value ] of pairs) {
    try {
      md.add(key, key.endsWith('-bin') ? Buffer.from(value, 'base64') : value);
    } catch (err) {
      usage(`bad metadata ${key}: ${err.message}`);
    }
  }
  return md;
}

// {key: [values]} (values of -bin keys base64); {} for none.
function mdToJson(md) {
  const out = {};
  if (!md) return out;
  for (const [ key, values ] of Object.entries(md.toJSON())) {
    out[key] = values.map(v => (Buffer.isBuffer(v) ? v.toString('base64') : String(v)));
  }
  return out;
}

// Milliseconds left until the call's deadline, or null without one.
function remainingMs(call) {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : Number(deadline);
  if (!Number.isFinite(at)) return null;
  return Math.max(0, Math.floor(at - Date.now()));
}

// Binds `server` (insecure) and prints "listening on HOST:PORT" with the bound port; exit 1 when
// it cannot listen. SIGTERM / SIGINT shut it down and exit 0 (forced after 2 s).
function serve(server, listen, host) {
  let stopping = false;
  function stop() {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => {
      server.forceShutdown();
      process.exit(0);
    }, 2000);
    force.unref();
    server.tryShutdown(() => process.exit(0));
  }
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      process.stderr.write(`error: cannot listen on ${listen}: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`listening on ${host}:${port}\n`);
  });
}

// Settles a unary / client-streaming call once both its callback ran and its 'status' event
// fired (grpc-js calls the callback first, then emits 'status' carrying the trailers): resolves
// with {err, reply, initial, trailing}. start(callback) makes the call and returns it.
function settle(start) {
  return new Promise(resolve => {
    const res = { err: null, reply: null, initial: null, trailing: null };
    const call = start((err, reply) => {
      res.err = err;
      res.reply = reply;
    });
    call.on('metadata', md => { res.initial = md; });
    call.on('status', status => {
      res.trailing = status.metadata;
      resolve(res);
    });
  });
}

// ---- Triple wrapper mode --------------------------------------------------------------------

const POJO = 'com.example.Pojo';
const STRING = 'java.lang.String';

// serializeType -> the independent Hessian implementation of that grammar (loaded when used).
const DIALECTS = {
  hessian2: { get lib() { return require('hessian.js-1'); }, grammar: 'SOFA 3.x draft grammar (hessian.js-1)' },
  hessian4: { get lib() { return require('hessian.js'); }, grammar: 'final Hessian 2.0 grammar (hessian.js)' },
};

function isDialect(name) {
  return Object.prototype.hasOwnProperty.call(DIALECTS, name);
}

// {RequestWrapper, ResponseWrapper}: the protobufjs types of triple_wrapper.proto at `file`.
function wrapperTypes(file) {
  const root = protobuf.loadSync(file);
  return {
    RequestWrapper: root.lookupType('org.apache.dubbo.triple.TripleRequestWrapper'),
    ResponseWrapper: root.lookupType('org.apache.dubbo.triple.TripleResponseWrapper'),
  };
}

// One value, fresh encoder (so the stream is self-contained: own class definitions and refs).
function encodeValue(dialect, value) {
  const encoder = new DIALECTS[dialect].lib.EncoderV2();
  encoder.write(value);
  return encoder.get();
}

// One complete Hessian value from buf, with a fresh decoder; trailing bytes are an error, so is
// an empty buf ("empty WHAT").
function decodeValue(dialect, buf, withType, what) {
  if (!buf || buf.length === 0) throw new Error(`empty ${what}`);
  const decoder = new DIALECTS[dialect].lib.DecoderV2(buf);
  const value = decoder.read(withType);
  const used = decoder.byteBuffer.position();
  if (used !== buf.length) throw new Error(`${buf.length - used} trailing byte(s) after the value`);
  return value;
}

// JSON-safe copy of a decoded Hessian value: cycles become {"$ref": "cycle"}, Long/Buffer/Date
// handled, Errors as {name, message}; with `unwrap`, {$class, $} wrappers become their $.
function hessianJson(value, unwrap = false, seen = new Set()) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'bigint') return value.toString();
  if (typeof value !== 'object') return value;
  if (Buffer.isBuffer(value)) return { $binary: value.toString('base64') };
  if (value instanceof Date) return { $date: value.getTime() };
  if (typeof value.toNumber === 'function' && 'low' in value && 'high' in value) return value.toString();
  if (seen.has(value)) return { $ref: 'cycle' };
  seen.add(value);
  const copy = v => hessianJson(v, unwrap, seen);
  let out;
  if (unwrap && typeof value.$class === 'string' && '$' in value) out = copy(value.$);
  else if (Array.isArray(value)) out = value.map(copy);
  else if (value instanceof Map) out = Object.fromEntries([ ...value ].map(([ k, v ]) => [ String(k), copy(v) ]));
  else if (value instanceof Error) out = { name: value.name, message: value.message };
  else {
    out = {};
    for (const key of Object.keys(value)) out[key] = copy(value[key]);
  }
  seen.delete(value);
  return out;
}

module.exports = {
  grpc,
  channelOptions,
  loadPackage,
  buildMetadata,
  mdToJson,
  remainingMs,
  serve,
  settle,
  POJO,
  STRING,
  DIALECTS,
  isDialect,
  wrapperTypes,
  encodeValue,
  decodeValue,
  hessianJson,
};
