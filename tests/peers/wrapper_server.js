#!/usr/bin/env node
// Triple provider in WRAPPER mode (non-protobuf payloads) on @grpc/grpc-js, h2c (insecure).
//
//   node tests/peers/wrapper_server.js --listen 127.0.0.1:PORT [--name NAME]
//        [--flavour sofa|dubbo] [--exception-code N]
//
// Serves /com.example.EchoService/{echo,add,fail,slow,whoami,echoobj}. Every request message is
// a protobuf TripleRequestWrapper{serializeType, repeated bytes args, repeated string argTypes}
// (interlink/wire/protos/triple_wrapper.proto, loaded relative to this file) and
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
const {
  grpc, channelOptions, mdToJson, remainingMs, serve, POJO, STRING, DIALECTS, isDialect, wrapperTypes,
  encodeValue, decodeValue, hessianJson,
} = require('./lib/grpc');
const cli = require('./lib/cli');

const SERVICE = 'com.example.EchoService';
const WRAPPER_PROTO = path.resolve(__dirname, '../../interlink/wire/protos/triple_wrapper.proto');

const METHODS = {
  echo: { argTypes: [ STRING ], returnType: STRING },
  add: { argTypes: [ 'int', 'int' ], returnType: 'int' },
  fail: { argTypes: [ STRING ], returnType: STRING },
  slow: { argTypes: [ 'int' ], returnType: 'int' },
  whoami: { argTypes: [], returnType: STRING },
  echoobj: { argTypes: [ POJO ], returnType: POJO },
};

const usage = cli.makeUsage(
  'usage: node wrapper_server.js --listen HOST:PORT [--name NAME] [--flavour sofa|dubbo]\n' +
    '       [--exception-code N]\n',
);

function parseArgs(argv) {
  const args = cli.assignFlags(argv, {
    '--listen': 'listen', '--name': 'name', '--flavour': 'flavour', '--exception-code': 'exceptionCode',
  }, usage, { listen: null, name: 'wrapper-provider', flavour: 'sofa', exceptionCode: 3 });
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

function isHessianInt(buf) {
  const tag = buf[0];
  return (tag >= 0x80 && tag <= 0xd7) || tag === 0x49; // compact ints, 'I' int32 (both grammars)
}

function first(md, key) {
  const values = md.get(key);
  if (values.length === 0) return null;
  return Buffer.isBuffer(values[0]) ? values[0].toString('base64') : String(values[0]);
}

// A decoded (withType) com.example.Pojo: {$class, $: {name, tags, nested}}; throws on mismatch.
function checkPojo(value, where, depth = 0) {
  if (depth > 32) throw new Error(`${where}: nested too deep`);
  if (value === null || value === undefined) return;
  if (typeof value !== 'object' || value.$class !== POJO || !value.$ || typeof value.$ !== 'object') {
    throw new Error(`${where}: expected a ${POJO} object, got ${JSON.stringify(hessianJson(value)).slice(0, 200)}`);
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
  const { RequestWrapper, ResponseWrapper } = wrapperTypes(WRAPPER_PROTO);

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
    if (!isDialect(serialize)) {
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
        value = decodeValue(serialize, Buffer.from(buf), type === POJO, 'argument');
      } catch (err) {
        throw invalid(`args[${i}] (${type}) is not a valid ${serialize} value in the ${DIALECTS[serialize].grammar}: ${err.message}`);
      }
      if (type === STRING && value !== null && typeof value !== 'string') {
        throw invalid(`args[${i}] (${type}): decoded ${typeof value}, not a string`);
      }
      if (type === 'int' && !(Number.isInteger(value) && value >= -(2 ** 31) && value < 2 ** 31)) {
        throw invalid(`args[${i}] (${type}): decoded ${JSON.stringify(hessianJson(value))}, not an int`);
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
      args: hessianJson(req.args),
      metadata: mdToJson(md),
      headers: raw,
      grpc_timeout: rawTimeout,
      deadline_ms: remainingMs(call),
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
  const server = new grpc.Server(channelOptions());
  server.addService(definition, handlers);
  serve(server, args.listen, args.listen.slice(0, args.listen.lastIndexOf(':')));
}

main();
