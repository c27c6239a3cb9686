#!/usr/bin/env node
// One-shot Triple client in WRAPPER mode on @grpc/grpc-js (h2c, insecure).
//
//   node tests/peers/wrapper_client.js --target HOST:PORT --case CASE --serialize hessian2|hessian4
//        [--metadata K=V ...] [--timeout-ms N] [--arg X ...] [--app APP]
//        [--service-version V] [--service-group G] [--serialize-type NAME] [--arg-type T ...]
//
// Calls /com.example.EchoService/<method> with ONE TripleRequestWrapper{serializeType, args,
// argTypes} (protobufjs, interlink/wire/protos/triple_wrapper.proto); each argument is encoded
// independently (fresh encoder) in the chosen dialect:
//   hessian2: SOFA / Caucho 3.x draft grammar (hessian.js-1 EncoderV2, what SOFARPC writes)
//   hessian4: final Hessian 2.0 grammar (hessian.js EncoderV2, Dubbo hessian-lite)
// and the reply's TripleResponseWrapper.data is decoded with the SAME dialect (it must be exactly
// one value). Cases, argTypes and default --arg values:
//   echo    ["java.lang.String"]   [hello]
//   add     ["int","int"]          [2 3]
//   fail    ["java.lang.String"]   [boom]
//   slow    ["int"]                [100]  (ms)
//   whoami  []                     no arguments
//   echoobj ["com.example.Pojo"]   --arg is JSON {"name":S,"tags":[S...],"nested":{...}|null};
//           default: {name:"outer", tags:["a","b"], nested:{name:"inner", tags:<the SAME list>,
//           nested:null}} (second instance reuses the class definition, tags is a
//           back-reference)
// --serialize-type NAME puts NAME in the wrapper's serializeType (args still encoded with
// --serialize); --arg-type T (repeatable) replaces argTypes: both for negative tests.
// Metadata: --app -> tri-consumer-appname, --service-version -> tri-service-version,
// --service-group -> tri-service-group, --metadata K=V adds any key (values of -bin keys are
// base64). --timeout-ms is the deadline (default 10000; 0 = none).
//
// Prints ONE JSON line on stdout:
//   {"ok":true,"case":..,"result":<decoded value>,"type":<wrapper.type>,
//    "serialize":<wrapper.serializeType>,"data_hex":<wrapper.data hex>,"metadata":{..},
//    "trailing":{..},"elapsed_ms":N}
//     whoami adds "whoami" (the server's JSON parsed); echoobj adds "result_class" and
//     "shared_tags" (true when outer.tags and nested.tags decode to the same object, i.e. the
//     back-reference survived). Metadata maps each key to the list of its values.
//   {"ok":false,"case":..,"code":N,"details":"...","metadata":{..},"trailing":{..},"elapsed_ms":N}
//     for a non-OK grpc-status.
//   With a non-zero "tri-exception-code" response header (Dubbo business exception, grpc-status
//   0): {"ok":false,"case":..,"code":0,"details":<exception message>,"exception":{
//     "tri_exception_code":"3","class":<Java class>,"message":<detailMessage>,"value":<decoded>},
//     "type","serialize","data_hex","metadata","trailing","elapsed_ms"}
//   If the reply data cannot be decoded: "ok":false,"code":0,"decode_error":"...".
// Exit 0 whenever the scenario ran, 2 on usage errors, 1 on an internal error.
'use strict';

const path = require('path');
const {
  grpc, channelOptions, buildMetadata, mdToJson, settle, POJO, STRING, isDialect, wrapperTypes, encodeValue,
  decodeValue, hessianJson,
} = require('./lib/grpc');
const cli = require('./lib/cli');

const SERVICE = 'com.example.EchoService';
const WRAPPER_PROTO = path.resolve(__dirname, '../../interlink/wire/protos/triple_wrapper.proto');
const CASES = {
  echo: { argTypes: [ STRING ], defaults: [ 'hello' ] },
  add: { argTypes: [ 'int', 'int' ], defaults: [ '2', '3' ] },
  fail: { argTypes: [ STRING ], defaults: [ 'boom' ] },
  slow: { argTypes: [ 'int' ], defaults: [ '100' ] },
  whoami: { argTypes: [], defaults: [] },
  echoobj: { argTypes: [ POJO ], defaults: [ null ] },
};
const FLAGS = [
  '--target', '--case', '--serialize', '--metadata', '--timeout-ms', '--arg', '--app',
  '--service-version', '--service-group', '--serialize-type', '--arg-type',
];

const usage = cli.makeUsage(
  `usage: node wrapper_client.js --target HOST:PORT --case ${Object.keys(CASES).join('|')}\n` +
    '       --serialize hessian2|hessian4 [--metadata K=V ...] [--timeout-ms N] [--arg X ...]\n' +
    '       [--app APP] [--service-version V] [--service-group G] [--serialize-type NAME]\n' +
    '       [--arg-type T ...]\n',
);

function parseArgs(argv) {
  const args = {
    target: null, case: null, serialize: null, metadata: [], timeoutMs: 10000, args: [],
    app: null, serviceVersion: null, serviceGroup: null, serializeType: null, argTypes: null,
  };
  cli.eachFlag(argv, FLAGS, usage, (flag, value) => {
    switch (flag) {
      case '--target': args.target = value; break;
      case '--case': args.case = value; break;
      case '--serialize': args.serialize = value; break;
      case '--metadata': {
        const [ key, text ] = cli.keyValue(usage, flag, value);
        args.metadata.push([ key.toLowerCase(), text ]);
        break;
      }
      case '--timeout-ms': args.timeoutMs = cli.parseIntArg(usage, flag, value, 0, Number.MAX_SAFE_INTEGER); break;
      case '--arg': args.args.push(value); break;
      case '--app': args.app = value; break;
      case '--service-version': args.serviceVersion = value; break;
      case '--service-group': args.serviceGroup = value; break;
      case '--serialize-type': args.serializeType = value; break;
      case '--arg-type': (args.argTypes = args.argTypes || []).push(value); break;
      default: usage(`unknown argument ${flag}`);
    }
  });
  if (!args.target) usage('--target is required');
  if (!args.case) usage('--case is required');
  if (!Object.prototype.hasOwnProperty.call(CASES, args.case)) usage(`unknown case ${args.case}`);
  if (!args.serialize) usage('--serialize is required');
  if (!isDialect(args.serialize)) {
    usage(`--serialize must be hessian2 or hessian4, got ${args.serialize}`);
  }
  const spec = CASES[args.case];
  if (args.args.length === 0) args.args = spec.defaults.slice();
  if (args.args.length !== spec.argTypes.length) {
    usage(`case ${args.case} takes ${spec.argTypes.length} --arg`);
  }
  args.values = args.args.map((text, i) => argValue(spec.argTypes[i], text));
  return args;
}

function pojoFromJson(obj, where) {
  if (obj === null) return null;
  if (typeof obj !== 'object' || Array.isArray(obj)) usage(`${where}: expected an object or null`);
  const name = obj.name === undefined ? null : obj.name;
  if (name !== null && typeof name !== 'string') usage(`${where}.name must be a string`);
  let tags = obj.tags === undefined ? null : obj.tags;
  if (tags !== null) {
    if (!Array.isArray(tags) || tags.some(t => typeof t !== 'string')) usage(`${where}.tags must be a list of strings`);
    tags = tags.slice();
  }
  return { $class: POJO, $: { name, tags, nested: pojoFromJson(obj.nested === undefined ? null : obj.nested, `${where}.nested`) } };
}

function defaultPojo() {
  const tags = [ 'a', 'b' ];
  const inner = { $class: POJO, $: { name: 'inner', tags, nested: null } };
  return { $class: POJO, $: { name: 'outer', tags, nested: inner } };
}

function argValue(type, text) {
  switch (type) {
    case STRING: return { $class: STRING, $: String(text) };
    case 'int': return { $class: 'int', $: cli.parseIntArg(usage, '--arg', text, cli.INT32_MIN, cli.INT32_MAX) };
    case POJO: {
      if (text === null) return defaultPojo();
      let obj;
      try {
        obj = JSON.parse(text);
      } catch (err) {
        usage(`echoobj --arg must be JSON: ${err.message}`);
      }
      return pojoFromJson(obj, 'arg');
    }
    default: throw new Error(`no argument type ${type}`);
  }
}

function metadataOf(args) {
  const pairs = args.metadata.slice();
  if (args.app !== null) pairs.push([ 'tri-consumer-appname', args.app ]);
  if (args.serviceVersion !== null) pairs.push([ 'tri-service-version', args.serviceVersion ]);
  if (args.serviceGroup !== null) pairs.push([ 'tri-service-group', args.serviceGroup ]);
  return buildMetadata(pairs, usage);
}

// JSON-safe copy: {$class, $} wrappers are unwrapped, cycles become {"$ref":"cycle"}.
function plain(value) {
  return hessianJson(value, true);
}

function exceptionInfo(code, decoded) {
  // Decoded WITHOUT type info: hessian.js / hessian.js-1 turn an object whose class name ends in
  // "Exception" (or that has detailMessage + stackTrace) into a JavaExceptionError with
  // name = the Java class and message = detailMessage (other fields are dropped).
  if (decoded instanceof Error) {
    return { tri_exception_code: code, class: decoded.name, message: decoded.message, value: plain(decoded) };
  }
  const message = decoded && typeof decoded === 'object' && decoded.detailMessage != null ? String(decoded.detailMessage) : null;
  return { tri_exception_code: code, class: null, message, value: plain(decoded) };
}

function call(client, method, body, md, options) {
  const identity = b => b;
  return settle(cb => client.makeUnaryRequest(`/${SERVICE}/${method}`, identity, identity, body, md, options, cb));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { RequestWrapper, ResponseWrapper } = wrapperTypes(WRAPPER_PROTO);
  const body = Buffer.from(RequestWrapper.encode(RequestWrapper.create({
    serializeType: args.serializeType === null ? args.serialize : args.serializeType,
    args: args.values.map(v => encodeValue(args.serialize, v)),
    argTypes: args.argTypes === null ? CASES[args.case].argTypes : args.argTypes,
  })).finish());

  const client = new grpc.Client(args.target, grpc.credentials.createInsecure(), channelOptions());
  const options = args.timeoutMs > 0 ? { deadline: Date.now() + args.timeoutMs } : {};
  const started = Date.now();
  const res = await call(client, args.case, body, metadataOf(args), options);
  let result;
  const meta = { metadata: mdToJson(res.initial), trailing: mdToJson(res.trailing) };
  if (res.err) {
    result = {
      ok: false,
      case: args.case,
      code: res.err.code,
      details: res.err.details === undefined ? String(res.err.message) : res.err.details,
      ...meta,
    };
  } else {
    let wrapper = null;
    try {
      wrapper = ResponseWrapper.decode(res.reply);
    } catch (err) {
      result = { ok: false, case: args.case, code: 0, details: `cannot parse TripleResponseWrapper: ${err.message}`, decode_error: err.message, ...meta };
    }
    if (wrapper) {
      const data = Buffer.from(wrapper.data || []);
      const info = { type: wrapper.type, serialize: wrapper.serializeType, data_hex: data.toString('hex') };
      const excValues = res.initial ? res.initial.get('tri-exception-code') : [];
      const excCode = excValues.length > 0 ? String(excValues[0]) : null;
      const isException = excCode !== null && excCode.trim() !== '0';
      let decoded;
      let decodeError = null;
      try {
        decoded = decodeValue(args.serialize, data, !isException && args.case === 'echoobj', 'data');
      } catch (err) {
        decodeError = `cannot decode response data as ${args.serialize}: ${err.message}`;
      }
      if (decodeError !== null) {
        result = { ok: false, case: args.case, code: 0, details: decodeError, decode_error: decodeError, ...info, ...meta };
      } else if (isException) {
        const exception = exceptionInfo(excCode, decoded);
        result = { ok: false, case: args.case, code: 0, details: exception.message, exception, ...info, ...meta };
      } else {
        result = { ok: true, case: args.case, result: plain(decoded), ...info, ...meta };
        if (args.case === 'whoami' && typeof decoded === 'string') cli.addParsed(result, 'whoami', decoded);
        if (args.case === 'echoobj') {
          result.result_class = decoded && typeof decoded === 'object' ? decoded.$class || null : null;
          const outer = decoded && decoded.$;
          const inner = outer && outer.nested && outer.nested.$;
          result.shared_tags = outer && inner && outer.tags != null ? outer.tags === inner.tags : null;
        }
      }
    }
  }
  result.elapsed_ms = Date.now() - started;
  client.close();
  cli.printResult(result);
}

cli.run(main, 'wrapper_client: internal error');
