#!/usr/bin/env node
// One-shot @grpc/grpc-js client for com.example.EchoService, used by the e2e tests.
//
//   node tests/peers/grpcjs_client.js --target HOST:PORT --case CASE
//        [--metadata KEY=VALUE ...] [--timeout-ms N] [--size BYTES]
//        [--message TEXT ...] [--a N] [--b N] [--sleep-ms N] [--proto PATH]
//
// Cases: echo, add, fail, sleep, count, sum, chat, big. Prints ONE JSON line on stdout:
//   {"ok":true,"case":"echo","message":...,"initial":{...},"trailing":{...},"elapsed_ms":N}
//   {"ok":false,"case":"sleep","code":4,"details":"...","trailing":{...},"elapsed_ms":N}
// Metadata objects map each key to the LIST of its values; values of "-bin" keys are base64.
// --metadata values of "-bin" keys are given base64-encoded too. --timeout-ms 0 = no deadline
// (default 10000). Exit 0 whenever the scenario ran (even if the RPC failed), 2 on usage
// errors, 1 on an internal error.
'use strict';

const path = require('path');
const { grpc, channelOptions, loadPackage, buildMetadata, mdToJson, settle } = require('./lib/grpc');
const cli = require('./lib/cli');

const CASES = ['echo', 'add', 'fail', 'sleep', 'count', 'sum', 'chat', 'big'];
const DEFAULT_MESSAGES = {
  echo: ['hello from grpc-js'],
  fail: ['bad request: 100% ünïcødé ✓'],
  chat: ['one', 'two', 'three'],
};
const FLAGS = [
  '--target', '--case', '--metadata', '--timeout-ms', '--size', '--message', '--a', '--b',
  '--sleep-ms', '--proto',
];

const usage = cli.makeUsage(
  `usage: node grpcjs_client.js --target HOST:PORT --case ${CASES.join('|')}\n` +
    '       [--metadata KEY=VALUE ...] [--timeout-ms N] [--size BYTES]\n' +
    '       [--message TEXT ...] [--a N] [--b N] [--sleep-ms N] [--proto PATH]\n',
);

function parseArgs(argv) {
  const int = (flag, value, min, max) => cli.parseIntArg(usage, flag, value, min, max);
  const args = {
    target: null,
    case: null,
    metadata: [],
    timeoutMs: 10000,
    size: 1024 * 1024,
    messages: [],
    a: null,
    b: null,
    sleepMs: 2000,
    proto: path.resolve(__dirname, '../../interlink/demo/echo.proto'),
  };
  cli.eachFlag(argv, FLAGS, usage, (flag, value) => {
    switch (flag) {
      case '--target': args.target = value; break;
      case '--case': args.case = value; break;
      case '--metadata': {
        const [key, text] = cli.keyValue(usage, flag, value);
        args.metadata.push([key.toLowerCase(), text]);
        break;
      }
      case '--timeout-ms': args.timeoutMs = int(flag, value, 0, Number.MAX_SAFE_INTEGER); break;
      case '--size': args.size = int(flag, value, 0, 64 * 1024 * 1024); break;
      case '--message': args.messages.push(value); break;
      case '--a': args.a = int(flag, value, cli.INT32_MIN, cli.INT32_MAX); break;
      case '--b': args.b = int(flag, value, cli.INT32_MIN, cli.INT32_MAX); break;
      case '--sleep-ms': args.sleepMs = int(flag, value, 0, cli.INT32_MAX); break;
      case '--proto': args.proto = value; break;
      default: usage(`unknown argument ${flag}`);
    }
  });
  if (!args.target) usage('--target is required');
  if (!args.case) usage('--case is required');
  if (!CASES.includes(args.case)) usage(`unknown case ${args.case}`);
  if (args.messages.length === 0) args.messages = DEFAULT_MESSAGES[args.case] || ['hello'];
  return args;
}

function callOptions(args) {
  return args.timeoutMs > 0 ? { deadline: Date.now() + args.timeoutMs } : {};
}

// Resolves with {reply, initial, trailing} of a unary / client-streaming call once it settled;
// rejects with the grpc error.
function responseOf(start) {
  return settle(start).then((res) => {
    if (res.err) throw res.err;
    return res;
  });
}

// Collects the replies of a server-streaming / bidi call: {replies, initial, trailing}.
function collect(call) {
  return new Promise((resolve, reject) => {
    const res = { replies: [], initial: null, trailing: null };
    let status = null;
    let ended = false;
    const finish = () => {
      if (ended && status && status.code === grpc.status.OK) resolve(res);
    };
    call.on('metadata', (md) => { res.initial = md; });
    call.on('data', (reply) => res.replies.push(reply));
    call.on('error', (err) => reject(err));
    call.on('status', (s) => { status = s; res.trailing = s.metadata; finish(); });
    call.on('end', () => { ended = true; finish(); });
  });
}

function withMetadata(r, fields) {
  return { ...fields, initial: mdToJson(r.initial), trailing: mdToJson(r.trailing) };
}

async function runCase(client, args) {
  const md = () => buildMetadata(args.metadata, usage);
  const opts = () => callOptions(args);
  switch (args.case) {
    case 'echo': {
      const r = await responseOf((cb) => client.echo({ message: args.messages[0] }, md(), opts(), cb));
      return withMetadata(r, { message: r.reply.message });
    }
    case 'add': {
      const a = args.a === null ? 2 : args.a;
      const b = args.b === null ? 3 : args.b;
      const r = await responseOf((cb) => client.add({ a, b }, md(), opts(), cb));
      return withMetadata(r, { sum: r.reply.sum });
    }
    case 'fail': {
      const r = await responseOf((cb) => client.fail({ message: args.messages[0] }, md(), opts(), cb));
      return withMetadata(r, { message: r.reply.message });
    }
    case 'sleep': {
      const r = await responseOf((cb) => client.sleep({ ms: args.sleepMs }, md(), opts(), cb));
      return withMetadata(r, { ms: r.reply.ms });
    }
    case 'count': {
      const n = args.a === null ? 5 : args.a;
      const r = await collect(client.count({ a: n }, md(), opts()));
      return withMetadata(r, { sums: r.replies.map((x) => x.sum) });
    }
    case 'sum': {
      const pairs = args.a === null && args.b === null
        ? [[1, 2], [3, 4], [5, 6]]
        : [[args.a || 0, args.b || 0]];
      const r = await responseOf((cb) => {
        const call = client.sum(md(), opts(), cb);
        for (const [a, b] of pairs) call.write({ a, b });
        call.end();
        return call;
      });
      return withMetadata(r, { sum: r.reply.sum });
    }
    case 'chat': {
      // Lockstep: the next request goes out only after the previous reply arrived, which
      // proves the peer answers each message immediately (else the deadline hits).
      const call = client.chat(md(), opts());
      const pending = args.messages.slice();
      const sendNext = () => {
        if (pending.length > 0) call.write({ message: pending.shift() });
        else call.end();
      };
      const done = collect(call);
      call.on('data', sendNext);
      sendNext();
      const r = await done;
      return withMetadata(r, { messages: r.replies.map((x) => x.message) });
    }
    case 'big': {
      const sent = 'x'.repeat(args.size);
      const r = await responseOf((cb) => client.echo({ message: sent }, md(), opts(), cb));
      const got = r.reply.message;
      return withMetadata(r, { sent: sent.length, length: got.length, matched: got === sent });
    }
    default:
      throw new Error(`unknown case ${args.case}`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const proto = loadPackage(args.proto);
  const client = new proto.com.example.EchoService(args.target, grpc.credentials.createInsecure(), channelOptions());
  const started = Date.now();
  let result;
  try {
    result = { ok: true, case: args.case, ...(await runCase(client, args)) };
  } catch (err) {
    if (err === null || typeof err !== 'object' || typeof err.code !== 'number') throw err;
    result = {
      ok: false,
      case: args.case,
      code: err.code,
      details: err.details === undefined ? String(err.message) : err.details,
      trailing: mdToJson(err.metadata),
    };
  }
  result.elapsed_ms = Date.now() - started;
  client.close();
  cli.printResult(result);
}

cli.run(main, 'grpcjs_client: internal error');
