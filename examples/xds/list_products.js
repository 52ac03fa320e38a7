// List the shop's products through xDS from Node: @grpc/grpc-js with @grpc/grpc-js-xds, no
// address and no tsunagu code.
//
//   GRPC_XDS_BOOTSTRAP=.run/xds-bootstrap.json NODE_PATH=.tools/node_modules node examples/xds/list_products.js
//
// `make` installs the npm packages under .tools/. The contract is loaded from protos/ at run
// time; the control plane (`mesh xds`) hands the client its endpoints, balancing, retries and
// mTLS settings (XdsChannelCredentials reads the certificate the bootstrap's provider names).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');
const loader = require('@grpc/proto-loader');

const root = path.resolve(__dirname, '..', '..');
const definition = loader.loadSync('shop/inventory/v1/inventory.proto', {
  includeDirs: [path.join(root, 'protos'), path.join(root, 'third_party', 'googleapis')],
  longs: String,
  defaults: true,
});
const { InventoryService } = grpc.loadPackageDefinition(definition).shop.inventory.v1;

xds.register();
const credentials = new xds.XdsChannelCredentials(grpc.credentials.createInsecure());
const client = new InventoryService('xds:///inventory', credentials);
const deadline = new Date(Date.now() + 20000);
client.listProducts({ pageSize: 3 }, { deadline }, (error, reply) => {
  if (error) {
    console.error(`ListProducts failed: ${error.code} ${error.details}`);
    process.exit(1);
  }
  for (const product of reply.products) {
    console.log(`${product.sku.padEnd(12)} ${product.name.padEnd(32)} stock ${product.stock}`);
  }
  client.close();
  process.exit(0);
});
