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
const bolt = require('./lib/bolt');
const cli = require('./lib/cli');

// case -> what its --arg values are (bolt.checkCaseArgs)
const CASES = {
  echo: 'text', add: 'ints', fail: 'text', slow: 'ms', whoami: 'none', echoobj: 'none', unknown: 'text',
};
const POJO = 'com.example.Pojo';
const MISSING = { interfaceName: 'com.example.Missing', version: '1.0' };
const DEFAULT_ARGS = {
  echo: [ 'hello' ], add: [ '2', '3' ], fail: [ 'boom' ], slow: [ '100' ], whoami: [], echoobj: [], unknown: [ 'hello' ],
};

const usage = cli.makeUsage(
  `usage: node bolt_client.js (--target HOST:PORT | --zk HOST:PORT[/ROOT]) --case ${Object.keys(CASES).join('|')} [--app APP]\n` +
    '       [--timeout-ms N] [--arg X ...] [--count N [--concurrency C]]\n' +
    '       [--target-app NAME] [--prop KEY=VALUE ...]\n',
);

function parseArgs(argv) {
  return bolt.parseCallArgs(argv, usage, { cases: CASES, defaultArgs: DEFAULT_ARGS, zk: true });
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

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const logger = bolt.makeLogger('bolt_client');
  const registry = args.zk === null ? null : bolt.zookeeperRegistry(args.zk, logger);
  const clientOpts = { logger, responseTimeout: args.timeoutMs };
  if (registry !== null) clientOpts.registry = registry;
  const client = new RpcClient(clientOpts);
  client.on('error', err => logger.warn('client error: %s', err && err.message));
  const target = args.case === 'unknown' ? MISSING : bolt.SERVICE;
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
  const result = await bolt.callOrLoad(args, consumer, invoke, value => {
    const res = { ok: true, case: args.case, result: value === undefined ? null : value };
    if (args.case === 'whoami' && typeof value === 'string') cli.addParsed(res, 'whoami', value);
    if (args.case === 'echoobj' && value && typeof value === 'object') {
      // the decoded reply keeps object identity: a back-reference decodes to the same list
      res.shared_tags = value.nested ? value.tags === value.nested.tags : null;
    }
    return res;
  });
  if (registry !== null) {
    const group = consumer._addressGroup;
    const seen = (group && group.allAddressList) || [];
    result.providers = seen.map(address => address.host);
  }
  await bolt.finish(result, started, () => Promise.resolve(client.close()).then(() => registry && registry.close()));
}

cli.run(main, 'bolt_client: internal error');
