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
const { RpcClient } = require('sofa-rpc-node').client;
const sofaBolt = require('sofa-bolt-node');
const bolt = require('./lib/bolt');
const cli = require('./lib/cli');

// case -> what its --arg values are (bolt.checkCaseArgs)
const CASES = { echo: 'text', add: 'ints', fail: 'text', sleep: 'ms', whoami: 'text' };
const DEFAULT_ARGS = {
  echo: [ 'hello' ], add: [ '2', '3' ], fail: [ 'boom' ], sleep: [ '100' ], whoami: [ '' ],
};

const usage = cli.makeUsage(
  `usage: node bolt_pb_client.js --target HOST:PORT --case ${Object.keys(CASES).join('|')} [--app APP]\n` +
    '       [--timeout-ms N] [--arg X ...] [--count N [--concurrency C]]\n' +
    '       [--target-app NAME] [--prop KEY=VALUE ...] [--proto PATH]\n',
);

function parseArgs(argv) {
  return bolt.parseCallArgs(argv, usage, {
    cases: CASES,
    defaultArgs: DEFAULT_ARGS,
    more: { '--proto': 'proto' },
    initial: { proto: path.resolve(__dirname, '../../interlink/demo/echo.proto') },
  });
}

// The protobuf codec needs the protobufjs Root in the encoder (request types) and the decoder
// (response types); sofa-rpc-node's RpcClient passes no `proto` to its connections unless
// given connectionOpts, so inject it into the protocol (the README's protocol.setOptions does
// the same globally).
function protocolWith(proto) {
  return Object.assign({}, sofaBolt, {
    encoder: options => sofaBolt.encoder(Object.assign({}, options, { proto })),
    decoder: options => sofaBolt.decoder(Object.assign({}, options, { proto })),
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

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let proto;
  try {
    proto = bolt.loadEchoProto(args.proto);
  } catch (err) {
    usage(`cannot load ${args.proto}: ${err.message}`);
  }
  const logger = bolt.makeLogger('bolt_pb_client');
  const client = new RpcClient({ logger, responseTimeout: args.timeoutMs, protocol: protocolWith(proto) });
  client.on('error', err => logger.warn('client error: %s', err && err.message));
  const consumerOpts = Object.assign({
    serverHost: args.target, responseTimeout: args.timeoutMs, proto,
  }, bolt.SERVICE);
  if (args.targetApp !== null) consumerOpts.targetAppName = args.targetApp;
  const consumer = client.createConsumer(consumerOpts);
  const serviceId = `${bolt.SERVICE.interfaceName}:${bolt.SERVICE.version}`;
  // replaces the library default requestProps {service}: keep "service", add the caller app
  const requestProps = Object.assign({ service: serviceId, app: args.app }, args.props);
  const [ method, callArg ] = methodAndArg(args);
  const invoke = () => consumer.invoke(method, [ Object.assign({}, callArg) ], {
    codecType: 'protobuf',
    responseTimeout: args.timeoutMs,
    requestProps: Object.assign({}, requestProps),
  });

  const started = Date.now();
  const result = await bolt.callOrLoad(args, consumer, invoke, reply => {
    const value = messageObject(reply);
    const res = { ok: true, case: args.case, result: value };
    if (args.case === 'whoami' && value && typeof value.message === 'string') cli.addParsed(res, 'whoami', value.message);
    return res;
  });
  await bolt.finish(result, started, () => client.close());
}

cli.run(main, 'bolt_pb_client: internal error');
