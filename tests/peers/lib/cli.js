// Command-line plumbing shared by the test peers: usage errors, flag parsing, the one JSON line a
// client prints, the --count/--concurrency load loop. No dependencies beyond Node itself.
'use strict';

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

// usage(message?): writes "error: MESSAGE" (when given) and the usage text to stderr, exits 2.
function makeUsage(text) {
  return message => {
    process.stderr.write(`${message ? `error: ${message}\n` : ''}${text}`);
    process.exit(2);
  };
}

// Walks "--flag value" pairs: -h/--help prints the usage, a flag not in `flags` or without a
// value is a usage error; each pair goes to set(flag, value).
function eachFlag(argv, flags, usage, set) {
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') usage();
    if (!flags.includes(flag)) usage(`unknown argument ${flag}`);
    if (i + 1 >= argv.length) usage(`${flag} needs a value`);
    set(flag, argv[++i]);
  }
}

// Flags that each store their value under a key: {'--listen': 'listen', ...}.
function assignFlags(argv, keys, usage, args) {
  eachFlag(argv, Object.keys(keys), usage, (flag, value) => { args[keys[flag]] = value; });
  return args;
}

function parseIntArg(usage, flag, text, min, max) {
  if (!/^-?\d+$/.test(String(text))) usage(`${flag} needs an integer, got ${JSON.stringify(text)}`);
  const n = Number(text);
  if (n < min || n > max) usage(`${flag} must be in [${min}, ${max}]`);
  return n;
}

// "KEY=VALUE" (KEY not empty) -> [KEY, VALUE].
function keyValue(usage, flag, text) {
  const eq = text.indexOf('=');
  if (eq <= 0) usage(`${flag} needs KEY=VALUE, got ${JSON.stringify(text)}`);
  return [ text.slice(0, eq), text.slice(eq + 1) ];
}

// --listen HOST:PORT of the Bolt servers -> {host (without [] of an IPv6 literal), port}.
function parseListen(usage, listen) {
  if (!listen) usage('--listen is required');
  const m = /^(.+):(\d+)$/.exec(listen);
  if (!m) usage(`--listen needs HOST:PORT, got ${JSON.stringify(listen)}`);
  const port = Number(m[2]);
  if (port > 65535) usage(`bad port ${m[2]}`);
  return { host: m[1].replace(/^\[(.*)\]$/, '$1'), port };
}

// Sets result[key] to the JSON parsed from text; leaves it out when text is not JSON.
function addParsed(result, key, text) {
  try { result[key] = JSON.parse(text); } catch (_) { /* keep the raw string only */ }
}

// Prints the one JSON line, then exits 0 once it is written.
function printResult(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

// Runs the async main; an exception is "PREFIX: stack" on stderr and exit 1.
function run(main, prefix) {
  main().catch(err => {
    process.stderr.write(`${prefix}: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  });
}

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[idx] * 1000) / 1000;
}

// `count` calls of invoke(), `concurrency` at a time: {calls, errors, first_error (errorJson of
// the first failure), concurrency, rps, p50_ms, p99_ms, max_ms}.
async function loadLoop(invoke, count, concurrency, errorJson) {
  const latencies = [];
  let errors = 0;
  let firstError = null;
  let next = 0;
  const worker = async () => {
    while (next < count) {
      next += 1;
      const t0 = process.hrtime.bigint();
      try {
        await invoke();
      } catch (err) {
        errors += 1;
        if (firstError === null) firstError = errorJson(err);
      }
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  latencies.sort((a, b) => a - b);
  return {
    calls: latencies.length,
    errors,
    first_error: firstError,
    concurrency,
    rps: Math.round((latencies.length / Math.max(seconds, 1e-9)) * 10) / 10,
    p50_ms: percentile(latencies, 50),
    p99_ms: percentile(latencies, 99),
    max_ms: percentile(latencies, 100),
  };
}

module.exports = {
  INT32_MIN,
  INT32_MAX,
  makeUsage,
  eachFlag,
  assignFlags,
  parseIntArg,
  keyValue,
  parseListen,
  addParsed,
  printResult,
  run,
  sleep,
  loadLoop,
};
