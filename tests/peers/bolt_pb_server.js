#!/usr/bin/env node
// SOFARPC (Bolt) provider with the PROTOBUF codec (Bolt codec 11) on sofa-rpc-node 2.10.0 /
// sofa-bolt-node 2.0.1 / protobufjs, no registry.
//
//   node tests/peers/bolt_pb_server.js --listen 127.0.0.1:PORT [--name NAME] [--app APP]
//        [--proto PATH]
//
// Serves com.example.EchoService version 1.0 from interlink/demo/echo.proto. With codec 11 the
// Bolt content is the raw protobuf encoding of the single argument; sofa-bolt-node finds the
// message types from the Bolt HEADER keys sofa_head_target_service + sofa_head_method_name
// (both mandatory) and the protobufjs Root given as the server's `proto` option.
//   echo(EchoRequest) -> EchoReply      same message
//   add(AddRequest) -> AddReply         sum = a + b with Java int overflow
//   fail(EchoRequest)                   throws Error(message). The node server answers Bolt status
//                                       SERVER_EXCEPTION (0x0002), className SofaResponse, header
//                                       {sofa_head_response_error: "true"}, content = the bare
//                                       UTF-8 bytes of the message (NOT a protobuf string); the
//                                       node client reports "Error: <message>".
//   sleep(SleepRequest) -> SleepRequest waits ms, returns the request (a response later than the
//                                       request's Bolt timeout is never sent: sofa-rpc-node drops
//                                       it and logs "process timeout" on stderr)
//   whoami(EchoRequest) -> EchoReply    (not in echo.proto: added to the loaded Root by this peer
//                                       and by bolt_pb_client.js) message = JSON of what this
//                                       server saw:
//     {"app": Bolt header "app" (else null), "headers": the Bolt header map parsed from the raw
//      frame, "props": the requestProps sofa-rpc-node rebuilt from the header (rpc_trace_context.*
//      keys folded into a map), "service": header service (sofa_head_target_service fallback),
//      "target_service", "method": sofa_head_method_name, "target_app": sofa_head_target_app,
//      "codec": "protobuf", "timeout_ms": Bolt timeout field, "request": the decoded EchoRequest,
//      "bolt": {"proto","ver1","type","request_id","codec","switch"}, "remote": "ip:port",
//      "served_by": NAME}
// A request with another codec (e.g. hessian2) is answered with an error (each method throws
// "expected codec protobuf (11), got ..."). A method or service missing from the .proto, or a
// request without the sofa_head_target_service header, makes sofa-bolt-node's decoder throw:
// the connection is closed without a response. The node server dispatches on
// sofa_head_target_service (the `service` header is not used with protobuf). An empty content
// (valid protobuf: all fields default) reaches the methods as the default message (the library
// itself would pass no argument).
//
// Binds only the given host; port 0 works (prints the bound port). stdout carries only
// "listening on HOST:PORT"; library warnings go to stderr. Exits 0 on SIGTERM / SIGINT, 2 on
// usage errors, 1 when it cannot listen.
'use strict';

const path = require('path');
const bolt = require('./lib/bolt');
const cli = require('./lib/cli');

const usage = cli.makeUsage(
  'usage: node bolt_pb_server.js --listen HOST:PORT [--name NAME] [--app APP] [--proto PATH]\n',
);

function parseArgs(argv) {
  const args = cli.assignFlags(argv, { '--listen': 'listen', '--name': 'name', '--app': 'app', '--proto': 'proto' }, usage, {
    listen: null,
    name: 'bolt-pb-provider',
    app: 'echo-server',
    proto: path.resolve(__dirname, '../../interlink/demo/echo.proto'),
  });
  return Object.assign(args, cli.parseListen(usage, args.listen));
}

// Plain object of a decoded protobufjs message (defaults included), or null.
function messageObject(msg) {
  if (msg == null) return null;
  if (typeof msg.toObject === 'function') return msg.toObject({ defaults: true, longs: String });
  return bolt.jsonSafe(msg);
}

function checkCodec(ctx) {
  const req = ctx && ctx.req;
  const codec = req && req.options ? req.options.codecType : null;
  if (codec !== 'protobuf') {
    const err = new Error(`expected codec protobuf (11), got ${codec}`);
    err.ignoreLog = true;
    throw err;
  }
}

function makeService(name, proto) {
  const service = proto.lookupService(bolt.SERVICE.interfaceName);
  // sofa-bolt-node passes NO argument when the Bolt content is empty (contentLen 0), although
  // zero bytes are a valid protobuf message (all fields default: EchoRequest{message: ""},
  // AddRequest{0, 0}), which is what grpcio / Java write for such messages. Substitute the
  // default instance, as a Java SOFARPC server (ProtobufSerializer) would decode it.
  const argOf = (ctx, request) => {
    checkCodec(ctx);
    if (request != null) return request;
    const method = service.get(ctx.req.data.methodName);
    return method.resolvedRequestType.decode(Buffer.alloc(0));
  };
  return {
    async echo(request) {
      request = argOf(this, request);
      return { message: request.message };
    },
    async add(request) {
      request = argOf(this, request);
      return { sum: (request.a + request.b) | 0 };
    },
    async fail(request) {
      request = argOf(this, request);
      const err = new Error(String(request.message));
      err.ignoreLog = true; // expected; keep stderr quiet
      throw err;
    },
    async sleep(request) {
      request = argOf(this, request);
      await cli.sleep(Math.max(0, Number(request.ms) || 0));
      return { ms: request.ms };
    },
    async whoami(request) {
      request = argOf(this, request);
      const req = this.req;
      const data = (req && req.data) || {};
      const headers = (req && req.boltHeaders) || {};
      const props = data.requestProps == null ? null : bolt.jsonSafe(data.requestProps);
      const pick = key => (headers[key] == null ? null : headers[key]);
      return {
        message: JSON.stringify({
          app: pick('app'),
          headers,
          props,
          service: headers.service != null ? headers.service : pick('sofa_head_target_service'),
          target_service: pick('sofa_head_target_service'),
          method: pick('sofa_head_method_name'),
          target_app: pick('sofa_head_target_app'),
          codec: req && req.options ? req.options.codecType : null,
          timeout_ms: req && req.options ? req.options.timeout : null,
          request: messageObject(request),
          bolt: (req && req.boltFrame) || null,
          remote: this.res ? this.res.remoteAddress : null,
          served_by: name,
        }),
      };
    },
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const logger = bolt.makeLogger(args.name);
  let proto;
  try {
    proto = bolt.loadEchoProto(args.proto);
  } catch (err) {
    usage(`cannot load ${args.proto}: ${err.message}`);
  }
  const server = bolt.createServer({
    appName: args.app,
    host: args.host,
    port: args.port,
    logger,
    proto, // protobufjs Root: sofa-bolt-node looks the method types up in it
    codecType: 'protobuf', // what a registry would advertise (serialization=protobuf)
    // no registry: nothing is published, clients use a fixed address
  }, makeService(args.name, proto));
  await bolt.serve(server, args);
}

cli.run(main, 'bolt_pb_server');
