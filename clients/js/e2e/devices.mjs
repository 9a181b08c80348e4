// Push registration through the library against a real gateway, driven by tests/js_client.rs.
// Usage: node e2e/devices.mjs <gateway http url> <token> <thread id>
// Registers an FCM token twice and a Web Push subscription (a PushSubscription-like object with
// toJSON, as browsers hand it), lists the devices, mutes and unmutes the thread, removes the FCM
// device, and prints one JSON line with what each call returned.
import WebSocket from "ws";
import { ChatClient } from "../dist/index.js";

const [url, token, thread] = process.argv.slice(2);
// REST only: the socket is never opened (no start()).
const client = new ChatClient({ url, token, WebSocket });
const subscription = {
  endpoint: "https://push.example/send/library",
  toJSON() {
    return {
      endpoint: this.endpoint,
      expirationTime: null,
      keys: {
        p256dh: "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
        auth: "tBHItJI5svbpez7KI4CCXg",
      },
    };
  },
};
const fcm = await client.registerDevice({ platform: "fcm", token: "library-fcm-token", locale: "fr" });
const fcmAgain = await client.registerDevice({ platform: "fcm", token: "library-fcm-token" });
const web = await client.registerDevice({ platform: "webpush", subscription });
const listed = await client.devices();
const muted = await client.muteThread(thread, new Date("2030-06-01T00:00:00Z"));
const unmuted = await client.muteThread(thread, null);
await client.unregisterDevice(fcm);
const after = await client.devices();
let refused = null;
try {
  await client.registerDevice({ platform: "apns", token: "not hex" });
} catch (e) {
  refused = { name: e.name, status: e.status, message: e.message };
}
process.stdout.write(
  `${JSON.stringify({ fcm, fcmAgain, web, listed: listed.map((d) => d.id), muted, unmuted, after: after.map((d) => d.id), refused })}\n`,
);
