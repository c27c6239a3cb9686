#!/usr/bin/env node
// Raw Bolt V1 load generator for the Bolt benchmark: plain `net`, no libraries, one thread.
//
//   node bench/bolt_load.js --port PORT --request FILE [--expect-content FILE] [--concurrency C]
//        [--connections N] [--warmup S] [--duration S] [--sync] [--phases] [--host 127.0.0.1]
//
// --request FILE is one complete Bolt V1 request frame (built by bench/bolt_frames.py with interlink's
// codec: a sofa-rpc-node style SofaRequest for echo(String)); every call sends a copy of it with a fresh
// 4-byte request id at offset 5 (counting up per connection). A closed loop keeps C calls in flight,
// spread over N connections (default 1: all of them multiplexed on one connection), and matches each
// response to its request by id. A call succeeds when its response has status SUCCESS (bytes 10-11 == 0)
// and (with --expect-content) a body of the expected length; anything else is an error (a gateway's own
// error reply is a SofaResponse{isError: true} with status SUCCESS, and a body of another length). The first response of the run (warm-up included) is also compared, byte
// for byte, with --expect-content (the SofaResponse body the provider sends); the full decode of the
// reply with interlink's codec is the harness's sanity pass before the run (bench/bolt_frames.py).
//
// Phases: warm-up (--warmup seconds), then the calls in flight are allowed to finish; with --sync the
// generator prints "warm" on stdout and waits for a line on stdin before measuring (so that the harness
// reads /proc exactly around the measured phase); then the measured phase (--duration seconds): only
// responses that arrive before its end count, latency = response arrival - request write (µs precision).
// Calls still in flight at the end are waited for (≤ 5 s) and not counted.
//
// --phases (implies --sync; for the churn part): one continuous closed loop cut into phases by the harness.
// After "warm", the first line on stdin starts measuring; every further line "mark" prints the JSON of the
// phase that just ended (same fields; "seconds" = its real length) and starts the next one at once, with
// no pause in the load; the line "end" prints the last phase and stops (calls in flight are waited for,
// ≤ 5 s, and not counted). --duration is then only a safety limit for the whole measured run.
//
// Prints one JSON line: {"calls", "errors", "unmatched", "seconds", "rps", "p50_ms", "p90_ms", "p99_ms",
// "max_ms", "client_cpu_s" (this process, measured phase), "warmup_calls", "first_response_ok",
// "first_response" (a description when it was not ok), "statuses" (error kind -> count),
// "in_flight_at_end"}. Exit 0 when the run completed (the JSON says how it went), 1 when a connection
// failed or closed (JSON with "fatal"), 2 on usage errors.
'use strict';

const fs = require('fs');
const net = require('net');
const { performance } = require('perf_hooks');
const readline = require('readline');

function usage(message) {
  process.stderr.write(
    `${message ? `error: ${message}\n` : ''}` +
      'usage: node bolt_load.js --port PORT --request FILE [--expect-content FILE] [--concurrency C]\n' +
      '       [--connections N] [--warmup S] [--duration S] [--sync] [--phases] [--host HOST]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const a = {
    host: '127.0.0.1', port: null, request: null, expect: null, concurrency: 1, connections: 1,
    warmup: 1, duration: 5, sync: false, phases: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    if (flag === '--sync') { a.sync = true; continue; }
    if (flag === '--phases') { a.phases = true; a.sync = true; continue; }
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    const v = argv[++i];
    switch (flag) {
      case '--host': a.host = v; break;
      case '--port': a.port = Number(v); break;
      case '--request': a.request = fs.readFileSync(v); break;
      case '--expect-content': a.expect = fs.readFileSync(v); break;
      case '--concurrency': a.concurrency = Number(v); break;
      case '--connections': a.connections = Number(v); break;
      case '--warmup': a.warmup = Number(v); break;
      case '--duration': a.duration = Number(v); break;
      default: usage(`unknown argument ${flag}`);
    }
  }
  if (!Number.isInteger(a.port) || a.port <= 0) usage('--port is required');
  if (!a.request) usage('--request is required');
  if (!(a.concurrency >= 1 && a.connections >= 1 && a.duration > 0 && a.warmup >= 0)) usage('bad numbers');
  const r = a.request;
  if (r.length < 22 || r[0] !== 1 || r[1] !== 1 || r.readInt16BE(2) !== 1) usage('--request is not a Bolt V1 RPC request');
  if (22 + r.readInt16BE(14) + r.readInt16BE(16) + r.readInt32BE(18) !== r.length) usage('--request: lengths do not add up');
  a.connections = Math.min(a.connections, a.concurrency);
  return a;
}

const args = parseArgs(process.argv.slice(2));
const template = args.request;
const frameLen = template.length;
const RESPONSE_HEAD = 20;
const expectLen = args.expect ? args.expect.length : -1;
const SOFA_RESPONSE_CLASS = Buffer.from('com.alipay.sofa.rpc.core.response.SofaResponse');

// ---- state ------------------------------------------------------------------------------------------

let phase = 'connecting'; // warmup -> draining -> waiting -> measure -> ending
let measureStart = 0;
let measureEnd = Infinity;
let phaseStart = 0; // --phases: start of the current phase
let calls = 0;
let errors = 0;
let unmatched = 0;
let warmupCalls = 0;
let cpuAtStart = null;
let cpuAtEnd = null;
let firstChecked = false;
let firstOk = null;
let firstDescription = null;
const statuses = {};
let latencies = new Float64Array(1 << 16); // ms
let nLat = 0;

function recordLatency(ms) {
  if (nLat === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[nLat++] = ms;
}

// The statistics of the measured calls so far (one phase with --phases), as the JSON object printed.
function stats(seconds, cpuEnd) {
  const sorted = latencies.subarray(0, nLat).sort();
  const pct = q => (nLat ? Math.round(sorted[Math.min(nLat - 1, Math.floor((q / 100) * nLat))] * 1000) / 1000 : null);
  const cpu = cpuAtStart && cpuEnd
    ? (cpuEnd.user - cpuAtStart.user + cpuEnd.system - cpuAtStart.system) / 1e6 : null;
  const inFlight = conns.reduce((n, c) => n + c.sent.size, 0);
  return {
    calls, errors, unmatched, seconds, rps: Math.round((calls / seconds) * 10) / 10,
    p50_ms: pct(50), p90_ms: pct(90), p99_ms: pct(99), max_ms: nLat ? Math.round(sorted[nLat - 1] * 1000) / 1000 : null,
    client_cpu_s: cpu, warmup_calls: warmupCalls, first_response_ok: firstOk,
    first_response: firstDescription, statuses, in_flight_at_end: inFlight,
    concurrency: args.concurrency, connections: args.connections, request_bytes: frameLen,
  };
}

function output(extra, code) {
  const seconds = args.phases ? (measureEnd - phaseStart) / 1000 : args.duration;
  const result = Object.assign(stats(Math.round(seconds * 1e6) / 1e6, cpuAtEnd), extra);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(code));
}

function fatal(message) {
  if (phase === 'done') return;
  phase = 'done';
  output({ fatal: message }, 1);
}

// ---- connections ----------------------------------------------------------------------------------

class Conn {
  constructor(index, target) {
    this.index = index;
    this.target = target; // calls in flight on this connection
    this.nextId = 1;
    this.sent = new Map(); // request id -> send time (ms)
    this.pending = null;
    this.socket = net.connect({ host: args.host, port: args.port });
    this.socket.setNoDelay(true);
    this.socket.on('connect', () => onConnected());
    this.socket.on('data', chunk => this.onData(chunk));
    this.socket.on('error', err => fatal(`connection ${index}: ${err.message}`));
    this.socket.on('close', () => fatal(`connection ${index} closed by the peer`));
  }

  // Tops the connection up to its target of calls in flight, in one write.
  fill() {
    const n = this.target - this.sent.size;
    if (n <= 0) return;
    const buf = Buffer.allocUnsafe(n * frameLen);
    const now = performance.now();
    for (let k = 0; k < n; k++) {
      const off = k * frameLen;
      template.copy(buf, off);
      const id = this.nextId;
      this.nextId = id >= 0x7fffffff ? 1 : id + 1;
      buf.writeInt32BE(id, off + 5);
      this.sent.set(id, now);
    }
    this.socket.write(buf);
  }

  onData(chunk) {
    let buf = this.pending ? Buffer.concat([ this.pending, chunk ]) : chunk;
    this.pending = null;
    let off = 0;
    const now = performance.now();
    let acks = null;
    while (buf.length - off >= RESPONSE_HEAD) {
      if (buf[off] !== 1) return fatal(`protocol code ${buf[off]} in a response (expected Bolt V1)`);
      const type = buf[off + 1];
      if (type !== 0) { // a request from the server: only heartbeats are expected; ack them
        if (buf.length - off < 22) break;
        const total = 22 + buf.readInt16BE(off + 14) + buf.readInt16BE(off + 16) + buf.readInt32BE(off + 18);
        if (buf.length - off < total) break;
        if (buf.readInt16BE(off + 2) === 0 && type === 1) {
          const ack = Buffer.alloc(20);
          ack[0] = 1; ack[4] = 1; ack[9] = buf[off + 9];
          buf.copy(ack, 5, off + 5, off + 9);
          (acks = acks || []).push(ack);
        }
        off += total;
        continue;
      }
      const classLen = buf.readInt16BE(off + 12);
      const headerLen = buf.readInt16BE(off + 14);
      const contentLen = buf.readInt32BE(off + 16);
      if (classLen < 0 || headerLen < 0 || contentLen < 0) return fatal('negative length in a response');
      const total = RESPONSE_HEAD + classLen + headerLen + contentLen;
      if (buf.length - off < total) break;
      const cmdcode = buf.readInt16BE(off + 2);
      const id = buf.readInt32BE(off + 5);
      const status = buf.readUInt16BE(off + 10);
      const sentAt = this.sent.get(id);
      if (cmdcode === 0) {
        // a heartbeat ack: we send no heartbeats, ignore
      } else if (sentAt === undefined) {
        unmatched++;
      } else {
        this.sent.delete(id);
        if (!firstChecked) {
          firstChecked = true;
          const start = off + RESPONSE_HEAD;
          const cls = buf.subarray(start, start + classLen);
          const content = buf.subarray(start + classLen + headerLen, off + total);
          firstOk = status === 0 && cls.equals(SOFA_RESPONSE_CLASS) && (!args.expect || content.equals(args.expect));
          if (!firstOk) {
            firstDescription = `status ${status}, class ${JSON.stringify(cls.toString('latin1'))}, ` +
              `${contentLen}-byte body (expected ${args.expect ? args.expect.length : '?'}), ` +
              `frame starts ${buf.subarray(off, Math.min(off + total, off + 400)).toString('hex')}`;
          }
        }
        if (phase === 'measure' && now < measureEnd) {
          if (status === 0 && (expectLen < 0 || contentLen === expectLen)) {
            calls++;
            recordLatency(now - sentAt);
          } else {
            // a SUCCESS status with a body of another length is an error reply (SofaResponse isError)
            const key = status === 0 ? 'SUCCESS, body of another length' : String(status);
            errors++;
            statuses[key] = (statuses[key] || 0) + 1;
          }
        } else if (phase === 'warmup' || phase === 'draining') {
          warmupCalls++;
        }
      }
      off += total;
    }
    if (off < buf.length) this.pending = Buffer.from(buf.subarray(off));
    if (acks) this.socket.write(Buffer.concat(acks));
    if (phase === 'warmup' || (phase === 'measure' && now < measureEnd)) {
      this.fill();
    } else if (this.sent.size === 0) {
      onIdle();
    }
  }
}

const conns = [];
let connected = 0;

function onConnected() {
  connected++;
  if (connected < conns.length) return;
  if (args.warmup > 0) {
    phase = 'warmup';
    for (const c of conns) c.fill();
    setTimeout(() => {
      phase = 'draining';
      onIdle();
      setTimeout(() => {
        if (phase === 'draining') fatal('calls of the warm-up still unanswered 5 s after it ended');
      }, 5000);
    }, args.warmup * 1000);
  } else {
    phase = 'draining';
    onIdle();
  }
}

// Called whenever a connection may have run dry: moves on once all of them have.
function onIdle() {
  if (conns.some(c => c.sent.size > 0)) return;
  if (phase === 'draining') {
    phase = 'waiting';
    if (!args.sync) return startMeasuring();
    process.stdout.write('warm\n');
    const rl = readline.createInterface({ input: process.stdin });
    let started = false;
    if (args.phases) {
      rl.on('line', line => {
        if (!started) { started = true; startMeasuring(); return; }
        if (line.trim() === 'end') { rl.close(); endMeasuring(true); } else { markPhase(); }
      });
      rl.once('close', () => {
        if (!started) fatal('stdin closed before the measured phase');
        else if (phase === 'measure') endMeasuring(true);
      });
      return;
    }
    rl.once('line', () => { started = true; rl.close(); startMeasuring(); });
    rl.once('close', () => { if (!started) fatal('stdin closed before the measured phase'); });
  } else if (phase === 'ending') {
    finish();
  }
}

function startMeasuring() {
  phase = 'measure';
  cpuAtStart = process.cpuUsage();
  measureStart = performance.now();
  phaseStart = measureStart;
  measureEnd = args.phases ? Infinity : measureStart + args.duration * 1000;
  for (const c of conns) c.fill();
  if (args.phases) {
    // a safety limit only: the harness ends the run with "end"
    setTimeout(() => { if (phase === 'measure') fatal(`no "end" on stdin within --duration ${args.duration} s`); },
      args.duration * 1000);
  } else {
    setTimeout(endMeasuring, args.duration * 1000);
  }
}

// --phases: print the phase that just ended and start the next one; the calls in flight carry on.
function markPhase() {
  if (phase !== 'measure') return;
  const now = performance.now();
  const cpuNow = process.cpuUsage();
  const line = JSON.stringify(stats(Math.round((now - phaseStart)) / 1000, cpuNow));
  process.stdout.write(`${line}\n`);
  calls = 0; errors = 0; unmatched = 0; nLat = 0;
  for (const key of Object.keys(statuses)) delete statuses[key];
  cpuAtStart = cpuNow;
  phaseStart = now;
}

function endMeasuring(now) {
  if (phase !== 'measure') return;
  if (now === true) {
    measureEnd = performance.now();
  } else {
    const late = performance.now() - measureEnd;
    if (late < 0) return setTimeout(endMeasuring, Math.ceil(-late)); // timers may fire a little early
  }
  phase = 'ending';
  setTimeout(finish, 5000);
  onIdle();
}

function finish() {
  if (phase === 'done') return;
  phase = 'done';
  cpuAtEnd = process.cpuUsage();
  for (const c of conns) {
    c.socket.removeAllListeners('close');
    c.socket.destroy();
  }
  output({}, 0);
}

for (let i = 0; i < args.connections; i++) {
  // spread C over N connections: the first (C mod N) get one more
  const target = Math.floor(args.concurrency / args.connections) + (i < args.concurrency % args.connections ? 1 : 0);
  conns.push(new Conn(i, target));
}
