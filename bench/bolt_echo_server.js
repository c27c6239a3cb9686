#!/usr/bin/env node
// Canned SOFARPC (Bolt V1) provider for the Bolt benchmark: plain `net`, no libraries.
//
//   node bench/bolt_echo_server.js --listen 127.0.0.1:PORT --reply CONTENT_LEN:FILE [--reply ...]
//
// Every RPC request (V1, type REQUEST, cmdcode RPC_REQUEST) is answered with a precomputed response
// frame (FILE: a complete Bolt V1 SofaResponse frame built by bench/bolt_frames.py with interlink's codec;
// its request id is replaced by the request's). The reply is picked by the request's contentLen: the
// --reply whose CONTENT_LEN is equal, else the nearest one (the harness passes the contentLen of its own
// request for each payload size; a sofa-rpc-node client's request for the same payload is a few dozen
// bytes longer or shorter, and still lands on the right reply as long as the sizes are far apart).
// The request body is not decoded: this provider costs a few µs per call, so the gateways are measured,
// not the provider.
//
// Heartbeats (cmdcode 0) get an ack (V1, type RESPONSE, cmdcode 0, same id, status SUCCESS). Oneway
// requests (type 2) get no answer (as Java). A V2 frame or anything unframable closes the connection.
// Prints "listening on HOST:PORT" (the bound port: --listen 127.0.0.1:0 works) and nothing else on
// stdout; exits 0 on SIGTERM/SIGINT, 2 on usage errors.
'use strict';

const fs = require('fs');
const net = require('net');

function usage(message) {
  process.stderr.write(
    `${message ? `error: ${message}\n` : ''}` +
      'usage: node bolt_echo_server.js --listen HOST:PORT --reply CONTENT_LEN:FILE [--reply ...]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = { listen: null, replies: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    const value = argv[++i];
    if (flag === '--listen') {
      args.listen = value;
    } else if (flag === '--reply') {
      const m = /^(\d+):(.+)$/.exec(value);
      if (!m) usage(`--reply needs CONTENT_LEN:FILE, got ${JSON.stringify(value)}`);
      const frame = fs.readFileSync(m[2]);
      if (frame.length < 20 || frame[0] !== 1 || frame[1] !== 0) usage(`${m[2]} is not a Bolt V1 response frame`);
      args.replies.push({ contentLen: Number(m[1]), frame });
    } else {
      usage(`unknown argument ${flag}`);
    }
  }
  if (!args.listen) usage('--listen is required');
  if (args.replies.length === 0) usage('at least one --reply is required');
  const m = /^(.+):(\d+)$/.exec(args.listen);
  if (!m) usage(`--listen needs HOST:PORT, got ${JSON.stringify(args.listen)}`);
  args.host = m[1];
  args.port = Number(m[2]);
  return args;
}

const args = parseArgs(process.argv.slice(2));
const exact = new Map(args.replies.map(r => [ r.contentLen, r.frame ]));

function replyFor(contentLen) {
  const hit = exact.get(contentLen);
  if (hit) return hit;
  let best = args.replies[0];
  for (const r of args.replies) {
    if (Math.abs(r.contentLen - contentLen) < Math.abs(best.contentLen - contentLen)) best = r;
  }
  return best.frame;
}

const V1_REQUEST_HEAD = 22;

function serve(socket) {
  socket.setNoDelay(true);
  let pending = null; // bytes of an incomplete frame
  socket.on('data', chunk => {
    let buf = pending ? Buffer.concat([ pending, chunk ]) : chunk;
    pending = null;
    let off = 0;
    const out = [];
    let outLen = 0;
    while (buf.length - off >= V1_REQUEST_HEAD) {
      if (buf[off] !== 1) {
        process.stderr.write(`bolt_echo_server: protocol code ${buf[off]} (only Bolt V1): closing\n`);
        socket.destroy();
        return;
      }
      const type = buf[off + 1];
      const cmdcode = buf.readInt16BE(off + 2);
      const classLen = buf.readInt16BE(off + 14);
      const headerLen = buf.readInt16BE(off + 16);
      const contentLen = buf.readInt32BE(off + 18);
      if (type === 0 || classLen < 0 || headerLen < 0 || contentLen < 0) {
        process.stderr.write(`bolt_echo_server: unexpected frame (type ${type}, lengths ${classLen}/` +
          `${headerLen}/${contentLen}): closing\n`);
        socket.destroy();
        return;
      }
      const total = V1_REQUEST_HEAD + classLen + headerLen + contentLen;
      if (buf.length - off < total) break;
      if (type === 1) { // REQUEST (a oneway request, type 2, gets no answer)
        let reply;
        if (cmdcode === 0) { // heartbeat -> ack
          reply = Buffer.alloc(20);
          reply[0] = 1; reply[1] = 0; reply.writeInt16BE(0, 2); reply[4] = 1;
          reply[9] = buf[off + 9]; // codec
        } else {
          const template = replyFor(contentLen);
          reply = Buffer.allocUnsafe(template.length);
          template.copy(reply);
        }
        buf.copy(reply, 5, off + 5, off + 9); // request id
        out.push(reply);
        outLen += reply.length;
      }
      off += total;
    }
    if (off < buf.length) pending = Buffer.from(buf.subarray(off)); // own copy: `chunk` may be reused
    if (out.length === 1) socket.write(out[0]);
    else if (out.length > 1) socket.write(Buffer.concat(out, outLen));
  });
  socket.on('error', () => socket.destroy());
}

const server = net.createServer(serve);
server.on('error', err => {
  process.stderr.write(`bolt_echo_server: cannot listen on ${args.listen}: ${err.message}\n`);
  process.exit(1);
});
server.listen(args.port, args.host, () => {
  const a = server.address();
  process.stdout.write(`listening on ${a.address}:${a.port}\n`);
});
for (const sig of [ 'SIGTERM', 'SIGINT' ]) process.on(sig, () => process.exit(0));
