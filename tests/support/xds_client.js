// A Node client (@grpc/grpc-js with @grpc/grpc-js-xds) that finds its servers through xDS,
// recording every call: the Node twin of tests/support/xds_client.py, with the same options and
// the same JSON lines, so one test checks both languages against one control plane.
//
//   GRPC_XDS_BOOTSTRAP=<file> NODE_PATH=.tools/node_modules node tests/support/xds_client.js \
//       --target xds:///echo --out calls.jsonl [--workers 4] [--calls N] [--seconds T]
//       [--timeout S] [--pause S] [--stop FILE] [--plaintext]
//
// It calls the raw-bytes method --method (default /tsunagu.test.Echo/Echo); an answer's label is
// the text before "|". It prints {"failed": N} at the end.
'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

function parse(argv) {
  const options = {
    method: '/tsunagu.test.Echo/Echo', workers: 4, calls: 100000, seconds: 60, timeout: 2,
    pause: 0, stop: '', plaintext: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (key === 'plaintext') { options.plaintext = true; continue; }
    const value = argv[++i];
    options[key] = ['workers', 'calls', 'seconds', 'timeout', 'pause'].includes(key) ? Number(value) : value;
  }
  if (!options.target || !options.out) throw new Error('--target and --out are required');
  return options;
}

async function main() {
  xds.register();
  const options = parse(process.argv.slice(2));
  const insecure = grpc.credentials.createInsecure();
  const credentials = options.plaintext ? insecure : new xds.XdsChannelCredentials(insecure);
  const client = new grpc.Client(options.target, credentials);
  const out = fs.openSync(options.out, 'a');
  const ends = Date.now() + options.seconds * 1000;
  let left = options.calls;
  let failed = 0;
  const identity = (buffer) => buffer;

  const more = () => {
    if (Date.now() >= ends || left <= 0) return false;
    if (options.stop && fs.existsSync(options.stop)) return false;
    left -= 1;
    return true;
  };
  const once = (request) => new Promise((resolve) => {
    const deadline = new Date(Date.now() + options.timeout * 1000);
    client.makeUnaryRequest(options.method, identity, identity, Buffer.from(request),
      new grpc.Metadata(), { deadline }, (error, answer) => resolve({ error, answer }));
  });
  const worker = async (number) => {
    let sequence = 0;
    while (more()) {
      sequence += 1;
      const record = { start: Date.now() / 1000, worker: number };
      const { error, answer } = await once(`${number}-${sequence}`);
      if (error) {
        failed += 1;
        const name = Object.keys(grpc.status).find((k) => grpc.status[k] === error.code) || 'UNKNOWN';
        record.code = name;
        record.details = String(error.details || '').slice(0, 200);
      } else {
        record.label = answer.toString().split('|', 1)[0];
      }
      record.end = Date.now() / 1000;
      fs.writeSync(out, JSON.stringify(record) + '\n');
      if (options.pause) await new Promise((r) => setTimeout(r, options.pause * 1000));
    }
  };
  await Promise.all(Array.from({ length: options.workers }, (_, n) => worker(n)));
  fs.closeSync(out);
  client.close();
  console.log(JSON.stringify({ failed }));
  process.exit(0);
}

main().catch((error) => { console.error(error); process.exit(2); });
