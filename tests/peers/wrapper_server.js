#!/usr/bin/env node
// Triple provider in WRAPPER mode (non-protobuf payloads) on @grpc/grpc-js, h2c (insecure).
//
//   node tests/peers/wrapper_server.js --listen 127.0.0.1:PORT [--name NAME]
//        [--flavour sofa|dubbo] [--exception-code N]
//
// Serves /com.example.EchoService/{echo,add,fail,slow,whoami,echoobj}. Every request message is
// a protobuf TripleRequestWrapper{serializeType, repeated bytes args, repeated string argTypes}
// (triple_wrapper.proto next to this file, a copy of shared/protos/triple_wrapper.proto) and
// every reply a TripleResponseWrapper{serializeType, data, type}; the gRPC messages are handled
// as raw bytes (identity serializers) and (de)coded here with protobufjs.
//
// Each args[i] is decoded INDEPENDENTLY (fresh decoder; it must be exactly one complete Hessian
// value, trailing bytes are an error) by an independent Hessian implementation:
//   serializeType "hessian2" -> SOFA / Caucho 3.x draft grammar: hessian.js-1 DecoderV2/EncoderV2
//                               (what sofa-rpc-node / sofa-hessian-node v3 use for Bolt)
//   serializeType "hessian4" -> final Hessian 2.0 grammar (Dubbo hessian-lite): hessian.js
//                               DecoderV2/EncoderV2 (`decode(buf, '2.0')`)
//   anything else            -> grpc-status INVALID_ARGUMENT (3)
// The two grammars are not interchangeable: a class definition / list / map / long string of
// the other dialect fails to decode (INVALID_ARGUMENT), only small ints and short strings are
// byte-identical.
//
// Methods (Java signatures; argTypes must match exactly, else INVALID_ARGUMENT naming both):
//   String echo(String)          -> the argument                    type "java.lang.String"
//   int add(int, int)            -> a + b, Java int overflow        type "int"
//                                   (each arg must be a Hessian int: 0x80-0xd7 or 'I')
//   String fail(String msg)      -> error, see --flavour
//   int slow(int ms)             -> waits ms (until cancelled), returns ms         type "int"
//   String whoami()              -> JSON of what this server saw:   type "java.lang.String"
//       {"method", "path", "serialize", "arg_types", "args", "served_by", "flavour",
//        "metadata": request metadata as grpc-js hands it to the handler ({key: [values]},
//                    -bin values base64; grpc-js drops grpc-timeout, te, content-type, ...),
//        "headers": the raw HTTP/2 request header block ({name: value}, incl. :path,
//                   :authority, te, content-type, grpc-timeout, user-agent) or null,
//        "grpc_timeout": raw grpc-timeout or null, "deadline_ms": remaining ms or null,
//        "service_version" (tri-service-version), "service_group" (tri-service-group),
//        "consumer_app" (tri-consumer-appname), "sofa_target_service"
//        (sofa_head_target_service), "sofa_method" (sofa_head_method_name),
//        "sofa_target_app" (sofa_head_target_app), "peer"}
//   Pojo echoobj(com.example.Pojo) -> the argument re-encoded       type "com.example.Pojo"
//       Pojo = Hessian object of class com.example.Pojo {name: String, tags: List<String>,
//       nested: Pojo or null}; exercises class definitions, instance refs to an earlier
//       definition and back-references (the client's default argument shares one tags list
//       between the outer and the nested object).
// Replies: TripleResponseWrapper{serializeType: the request's, data: the result encoded with
// the same dialect (fresh encoder), type: the declared return type}; initial metadata
// x-served-by: NAME.
//
// fail(msg):
//   --flavour sofa (default): grpc-status UNKNOWN (2), grpc-message msg (what SOFARPC Triple /
//     grpc-java does with an exception thrown by the service), no message.
//   --flavour dubbo: what Dubbo 3.2+/3.3 does for a business exception of a wrapped method:
//     response HEADERS carry "tri-exception-code: 3" (RpcException.BIZ_EXCEPTION, used when the
//     throwable maps to status UNKNOWN; --exception-code N overrides it; Dubbo clients only test
//     != 0), then ONE TripleResponseWrapper message {serializeType: the request's, type: the
//     DECLARED return type "java.lang.String" (Dubbo's WrapResponsePack uses the method's return
//     class, not the exception's), data: the serialized throwable}, then trailers grpc-status 0.
//     The throwable is a java.lang.RuntimeException written like hessian-lite's JavaSerializer
//     (fields detailMessage, cause, stackTrace, suppressedExceptions): detailMessage = msg,
//     cause = back-reference to itself (Throwable.cause == this when unset), stackTrace =
//     "[java.lang.StackTraceElement" list with one element {declaringClass
//     "com.example.EchoServiceImpl", methodName "fail", fileName "EchoServiceImpl.java",
//     lineNumber 42}, suppressedExceptions = empty list typed
//     "java.util.Collections$UnmodifiableRandomAccessList". Encoded with the request's dialect
//     (hessian4 -> final grammar, as a Dubbo provider would; hessian2 -> SOFA draft grammar).
//
// Prints "listening on HOST:PORT" (the bound port, so PORT 0 works) once bound and nothing else
// on stdout; exits 0 on SIGTERM / SIGINT, 2 on usage errors, 1 when it cannot listen.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');
const hessianSofa = require('hessian.js-1');
const hessianFinal = require('hessian.js');

const SERVICE = 'com.example.EchoService';
const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
const POJO = 'com.example.Pojo';
const STRING = 'java.lang.String';

const METHODS = {
  echo: { argTypes: [ STRING ], returnType: STRING },
  add: { argTypes: [ 'int', 'int' ], returnType: 'int' },
  fail: { argTypes: [ STRING ], returnType: STRING },
  slow: { argTypes: [ 'int' ], returnType: 'int' },
  whoami: { argTypes: [], returnType: STRING },
  echoobj: { argTypes: [ POJO ], returnType: POJO },
};

const DIALECTS = {
  hessian2: { lib: hessianSofa, grammar: 'SOFA 3.x draft grammar (hessian.js-1)' },
  hessian4: { lib: hessianFinal, grammar: 'final Hessian 2.0 grammar (hessian.js)' },
};

function usage(message) {
  process.stderr.write(
    `${message ? `error: ${message}\n` : ''}` +
      'usage: node wrapper_server.js --listen HOST:PORT [--name NAME] [--flavour sofa|dubbo]\n' +
      '       [--exception-code N]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = { listen: null, name: 'wrapper-provider', flavour: 'sofa', exceptionCode: 3 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    const key = {
      '--listen': 'listen', '--name': 'name', '--flavour': 'flavour', '--exception-code': 'exceptionCode',
    }[flag];
    if (!key) usage(`unknown argument ${flag}`);
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    args[key] = argv[++i];
  }
  if (!args.listen) usage('--listen is required');
  if (!/^(.+):(\d+)$/.test(args.listen)) usage(`--listen needs HOST:PORT, got ${JSON.stringify(args.listen)}`);
  if (args.flavour !== 'sofa' && args.flavour !== 'dubbo') usage(`--flavour must be sofa or dubbo, got ${args.flavour}`);
  if (!/^-?\d+$/.test(String(args.exceptionCode))) usage('--exception-code needs an integer');
  args.exceptionCode = Number(args.exceptionCode);
  return args;
}

// ---- raw HTTP/2 request headers -------------------------------------------------------------
// grpc-js removes grpc-timeout, te, content-type, ... from the metadata a handler sees; keep the
// raw header block per request by wrapping Metadata.fromHttp2Headers (the server builds the
// call's metadata with it and hands that same object to the handler).
const rawHeaders = new WeakMap();
const fromHttp2Headers = grpc.Metadata.fromHttp2Headers;
grpc.Metadata.fromHttp2Headers = function(headers) {
  const md = fromHttp2Headers.call(this, headers);
  try {
    const copy = {};
    for (const key of Object.keys(headers)) copy[key] = headers[key];
    rawHeaders.set(md, copy);
  } catch (_) {
    // diagnostics only
  }
  return md;
};

// ---- helpers --------------------------------------------------------------------------------

class CallError extends Error {
  constructor(code, details) {
    super(details);
    this.code = code;
    this.details = details;
  }
}

function invalid(details) {
  return new CallError(grpc.status.INVALID_ARGUMENT, details);
}

// One complete Hessian value from buf, with a fresh decoder; trailing bytes are an error.
function decodeValue(dialect, buf, withType) {
  if (!buf || buf.length === 0) throw new Error('empty argument');
  const decoder = new DIALECTS[dialect].lib.DecoderV2(buf);
  const value = decoder.read(withType);
  const used = decoder.byteBuffer.position();
  if (used !== buf.length) throw new Error(`${buf.length - used} trailing byte(s) after the value`);
  return value;
}

// One value, fresh encoder (so the stream is self-contained: own class definitions and refs).
function encodeValue(dialect, value) {
  const encoder = new DIALECTS[dialect].lib.EncoderV2();
  encoder.write(value);
  return encoder.get();
}

function isHessianInt(buf) {
  const tag = buf[0];
  return (tag >= 0x80 && tag <= 0xd7) || tag === 0x49; // compact ints, 'I' int32 (both grammars)
}

function mdToJson(md) {
  const out = {};
  if (!md) return out;
  for (const [key, values] of Object.entries(md.toJSON())) {
    out[key] = values.map(v => (Buffer.isBuffer(v) ? v.toString('base64') : String(v)));
  }
  return out;
}

function first(md, key) {
  const values = md.get(key);
  if (values.length === 0) return null;
  return Buffer.isBuffer(values[0]) ? values[0].toString('base64') : String(values[0]);
}

function deadlineMs(call) {
  const deadline = call.getDeadline();
  const at = deadline instanceof Date ? deadline.getTime() : Number(deadline);
  if (!Number.isFinite(at)) return null;
  return Math.max(0, Math.floor(at - Date.now()));
}

// JSON-safe copy of a decoded Hessian value: cycles become {"$ref": "cycle"}, Long/Buffer/Date
// handled, Errors as {name, message}.
function jsonSafe(value, seen = new Set()) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'bigint') return value.toString();
  if (typeof value !== 'object') return value;
  if (Buffer.isBuffer(value)) return { $binary: value.toString('base64') };
  if (value instanceof Date) return { $date: value.getTime() };
  if (typeof value.toNumber === 'function' && 'low' in value && 'high' in value) return value.toString();
  if (seen.has(value)) return { $ref: 'cycle' };
  seen.add(value);
  let out;
  if (Array.isArray(value)) out = value.map(v => jsonSafe(v, seen));
  else if (value instanceof Map) out = Object.fromEntries([ ...value ].map(([ k, v ]) => [ String(k), jsonSafe(v, seen) ]));
  else if (value instanceof Error) out = { name: value.name, message: value.message };
  else {
    out = {};
    for (const key of Object.keys(value)) out[key] = jsonSafe(value[key], seen);
  }
  seen.delete(value);
  return out;
}

// A decoded (withType) com.example.Pojo: {$class, $: {name, tags, nested}}; throws on mismatch.
function checkPojo(value, where, depth = 0) {
  if (depth > 32) throw new Error(`${where}: nested too deep`);
  if (value === null || value === undefined) return;
  if (typeof value !== 'object' || value.$class !== POJO || !value.$ || typeof value.$ !== 'object') {
    throw new Error(`${where}: expected a ${POJO} object, got ${JSON.stringify(jsonSafe(value)).slice(0, 200)}`);
  }
  const fields = value.$;
  for (const key of Object.keys(fields)) {
    if (![ 'name', 'tags', 'nested' ].includes(key)) throw new Error(`${where}: unexpected field ${key}`);
  }
  if (fields.name != null && typeof fields.name !== 'string') throw new Error(`${where}.name: not a string`);
  if (fields.tags != null) {
    if (!Array.isArray(fields.tags)) throw new Error(`${where}.tags: not a list`);
    fields.tags.forEach((t, i) => {
      if (t != null && typeof t !== 'string') throw new Error(`${where}.tags[${i}]: not a string`);
    });
  }
  checkPojo(fields.nested, `${where}.nested`, depth + 1);
}

function exceptionObject(message) {
  const ex = { $class: 'java.lang.RuntimeException', $: {} };
  ex.$.detailMessage = { $class: STRING, $: message };
  ex.$.cause = ex; // Throwable.cause == this: a back-reference to the object itself
  ex.$.stackTrace = {
    $class: '[java.lang.StackTraceElement',
    $: [ {
      $class: 'java.lang.StackTraceElement',
      $: {
        declaringClass: { $class: STRING, $: 'com.example.EchoServiceImpl' },
        methodName: { $class: STRING, $: 'fail' },
        fileName: { $class: STRING, $: 'EchoServiceImpl.java' },
        lineNumber: { $class: 'int', $: 42 },
      },
    } ],
  };
  ex.$.suppressedExceptions = { $class: 'java.util.Collections$UnmodifiableRandomAccessList', $: [] };
  return ex;
}

// ---- service --------------------------------------------------------------------------------

function makeService(opts) {
  const root = protobuf.loadSync(path.join(__dirname, 'triple_wrapper.proto'));
  const RequestWrapper = root.lookupType('org.apache.dubbo.triple.TripleRequestWrapper');
  const ResponseWrapper = root.lookupType('org.apache.dubbo.triple.TripleResponseWrapper');

  function parseRequest(method, buf) {
    let wrapper;
    try {
      wrapper = RequestWrapper.decode(buf);
    } catch (err) {
      throw invalid(`cannot parse TripleRequestWrapper: ${err.message}`);
    }
    const serialize = wrapper.serializeType || '';
    const args = wrapper.args || [];
    const argTypes = wrapper.argTypes || [];
    if (!Object.prototype.hasOwnProperty.call(DIALECTS, serialize)) {
      throw invalid(`unsupported serializeType ${JSON.stringify(serialize)} (expected hessian2 or hessian4)`);
    }
    const want = METHODS[method].argTypes;
    if (argTypes.length !== want.length || argTypes.some((t, i) => t !== want[i])) {
      throw invalid(`argTypes mismatch for ${method}: got ${JSON.stringify(argTypes)}, expected ${JSON.stringify(want)}`);
    }
    if (args.length !== want.length) {
      throw invalid(`${method} takes ${want.length} argument(s), got ${args.length} args`);
    }
    const values = args.map((buf, i) => {
      const type = want[i];
      if (type === 'int' && buf.length > 0 && !isHessianInt(buf)) {
        throw invalid(`args[${i}] (${type}): not a Hessian int (tag 0x${buf[0].toString(16)})`);
      }
      let value;
      try {
        value = decodeValue(serialize, Buffer.from(buf), type === POJO);
      } catch (err) {
        throw invalid(`args[${i}] (${type}) is not a valid ${serialize} value in the ${DIALECTS[serialize].grammar}: ${err.message}`);
      }
      if (type === STRING && value !== null && typeof value !== 'string') {
        throw invalid(`args[${i}] (${type}): decoded ${typeof value}, not a string`);
      }
      if (type === 'int' && !(Number.isInteger(value) && value >= -(2 ** 31) && value < 2 ** 31)) {
        throw invalid(`args[${i}] (${type}): decoded ${JSON.stringify(jsonSafe(value))}, not an int`);
      }
      if (type === POJO) {
        try {
          checkPojo(value, `args[${i}]`);
        } catch (err) {
          throw invalid(err.message);
        }
      }
      return value;
    });
    return { serialize, argTypes, args: values };
  }

  function reply(serialize, data, type) {
    return Buffer.from(ResponseWrapper.encode(ResponseWrapper.create({ serializeType: serialize, data, type })).finish());
  }

  function servedBy() {
    const md = new grpc.Metadata();
    md.set('x-served-by', opts.name);
    return md;
  }

  function whoami(call, req) {
    const md = call.metadata;
    const raw = rawHeaders.get(md) || null;
    const rawTimeout = raw && raw['grpc-timeout'] !== undefined ? String(raw['grpc-timeout']) : null;
    return JSON.stringify({
      method: 'whoami',
      path: call.getPath(),
      serialize: req.serialize,
      arg_types: req.argTypes,
      args: jsonSafe(req.args),
      metadata: mdToJson(md),
      headers: raw,
      grpc_timeout: rawTimeout,
      deadline_ms: deadlineMs(call),
      service_version: first(md, 'tri-service-version'),
      service_group: first(md, 'tri-service-group'),
      consumer_app: first(md, 'tri-consumer-appname'),
      sofa_target_service: first(md, 'sofa_head_target_service'),
      sofa_method: first(md, 'sofa_head_method_name'),
      sofa_target_app: first(md, 'sofa_head_target_app'),
      peer: call.getPeer(),
      served_by: opts.name,
      flavour: opts.flavour,
    });
  }

  function handler(method) {
    const sig = METHODS[method];
    return (call, callback) => {
      let req;
      try {
        req = parseRequest(method, call.request);
      } catch (err) {
        if (err instanceof CallError) return callback({ code: err.code, details: err.details });
        return callback({ code: grpc.status.INTERNAL, details: String(err && err.message) });
      }
      const ok = value => {
        let data;
        try {
          data = encodeValue(req.serialize, value);
        } catch (err) {
          return callback({ code: grpc.status.INTERNAL, details: `cannot encode the result: ${err.message}` });
        }
        call.sendMetadata(servedBy());
        return callback(null, reply(req.serialize, data, sig.returnType));
      };
      switch (method) {
        case 'echo':
          return ok(req.args[0] === null ? null : { $class: STRING, $: req.args[0] });
        case 'add':
          return ok({ $class: 'int', $: (req.args[0] + req.args[1]) | 0 });
        case 'echoobj':
          return ok(req.args[0]);
        case 'whoami':
          return ok({ $class: STRING, $: whoami(call, req) });
        case 'slow': {
          const ms = Math.max(0, req.args[0]);
          const timer = setTimeout(() => {
            call.removeListener('cancelled', onCancel);
            ok({ $class: 'int', $: req.args[0] | 0 });
          }, ms);
          const onCancel = () => clearTimeout(timer);
          call.on('cancelled', onCancel);
          return undefined;
        }
        case 'fail': {
          const message = req.args[0] === null ? 'null' : String(req.args[0]);
          if (opts.flavour === 'sofa') {
            return callback({ code: grpc.status.UNKNOWN, details: message });
          }
          const md = servedBy();
          md.set('tri-exception-code', String(opts.exceptionCode));
          let data;
          try {
            data = encodeValue(req.serialize, exceptionObject(message));
          } catch (err) {
            return callback({ code: grpc.status.INTERNAL, details: `cannot encode the exception: ${err.message}` });
          }
          call.sendMetadata(md);
          return callback(null, reply(req.serialize, data, sig.returnType));
        }
        default:
          return callback({ code: grpc.status.UNIMPLEMENTED, details: `unknown method ${method}` });
      }
    };
  }

  const identity = buf => buf;
  const definition = {};
  const handlers = {};
  for (const method of Object.keys(METHODS)) {
    definition[method] = {
      path: `/${SERVICE}/${method}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
      originalName: method,
    };
    handlers[method] = handler(method);
  }
  return { definition, handlers };
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const { definition, handlers } = makeService(args);
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
  server.addService(definition, handlers);
  const host = args.listen.slice(0, args.listen.lastIndexOf(':'));

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

  server.bindAsync(args.listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      process.stderr.write(`error: cannot listen on ${args.listen}: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`listening on ${host}:${port}\n`);
  });
}

main();
