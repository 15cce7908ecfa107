// Starts the npm `web-push-testing` mock push service on 127.0.0.1 with an ephemeral port and
// prints that port on stdout. Its own CLI wants a fixed port and builds `notifyUrl` from it,
// so this launcher drives its server class directly. Run under Node.js (an independent
// runtime): `node tests/peers/web_push_testing_server.cjs`. It exits when stdin closes, so a
// parent that dies never leaves it behind.
"use strict";

const path = require("node:path");

const base = path.dirname(
  require.resolve("web-push-testing/package.json", { paths: [__dirname, process.cwd()] }),
);
const { PushApiModel } = require(path.join(base, "src", "PushApiModel.js"));
const WebPushTestingServer = require(path.join(base, "src", "server.js"));

const model = new PushApiModel();
// The constructor only records the port; startServer() would listen on every interface and
// print to stdout, so the handlers are registered and the app is bound here instead.
const server = new WebPushTestingServer(model, 0);
server.setRequestHandlers();
const listener = server._app.listen(0, "127.0.0.1", () => {
  const { port } = listener.address();
  model.notifyUrl = `http://127.0.0.1:${port}/notify/`;
  process.stdout.write(`${port}\n`);
});
listener.on("error", (err) => {
  console.error(err);
  process.exit(1);
});

process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));
