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

const bolt = require('./lib/bolt');
const cli = require('./lib/cli');

const usage = cli.makeUsage(
  'usage: node bolt_server.js --listen HOST:PORT [--name NAME] [--app APP] [--zk HOST:PORT[/ROOT]]\n',
);

function parseArgs(argv) {
  const args = cli.assignFlags(argv, { '--listen': 'listen', '--name': 'name', '--app': 'app', '--zk': 'zk' }, usage, {
    listen: null, name: 'bolt-provider', app: 'echo-server', zk: null,
  });
  Object.assign(args, cli.parseListen(usage, args.listen));
  if (args.zk !== null) bolt.checkZk(usage, args.zk);
  return args;
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
      await cli.sleep(Math.max(0, Number(ms) || 0));
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
      const props = data.requestProps == null ? null : bolt.jsonSafe(data.requestProps);
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
  const logger = bolt.makeLogger(args.name);
  const options = {
    appName: args.app,
    host: args.host,
    port: args.port,
    logger,
    // no registry (default): nothing is published, clients use a fixed address
  };
  let registry = null;
  if (args.zk !== null) {
    registry = bolt.zookeeperRegistry(args.zk, logger);
    options.registry = registry;
    if (!WILDCARD_HOSTS.has(args.host)) options.publishAddress = args.host;
  }
  const server = bolt.createServer(options, makeService(args.name));
  await bolt.serve(server, args, {
    // server.close() unpublishes first (deletes the ZooKeeper node when --zk is given)
    afterClose: () => registry && registry.close(),
    afterStart: async () => {
      if (registry === null) return;
      try {
        await withTimeout(registry.ready().then(() => server.publish()), PUBLISH_TIMEOUT_MS,
          `publishing to ZooKeeper ${args.zk}`);
      } catch (err) {
        process.stderr.write(`[${args.name}] cannot publish to ZooKeeper ${args.zk}: ${err.message}\n`);
        process.exit(1);
      }
    },
  });
}

cli.run(main, 'bolt_server');
