// The receiving side of Web Push, written from the RFCs with Node's own crypto (no code shared
// with the gateway): checks each request's VAPID token (RFC 8292: ES256 over the header and
// claims, `aud` = the endpoint's origin, `exp` at most 24 h ahead, `k` = the signing key) and
// decrypts its body (RFC 8291 over RFC 8188 aes128gcm) with the subscription's private key and
// auth secret.
//
// stdin: {"ua_private", "ua_public", "auth" (base64url), "vapid_public" (base64url, expected `k`),
//         "requests": [{"endpoint", "authorization", "body" (base64)}]}
// stdout: one JSON line per request: {"ok": true, "payload", "claims"} or {"ok": false, "error"}.

import crypto from 'node:crypto';

const b64url = (s) => Buffer.from(s, 'base64url');
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();

function checkVapid(authorization, endpoint, expectedKey) {
  const match = /^vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)$/.exec(authorization ?? '');
  if (!match) throw new Error(`not a vapid Authorization header: ${authorization}`);
  const [, token, k] = match;
  if (k !== expectedKey) throw new Error('k is not the VAPID public key');
  const [h, c, s] = token.split('.');
  const header = JSON.parse(b64url(h).toString());
  if (header.alg !== 'ES256') throw new Error(`alg ${header.alg}`);
  const point = b64url(k);
  const jwk = { kty: 'EC', crv: 'P-256', x: point.subarray(1, 33).toString('base64url'), y: point.subarray(33).toString('base64url') };
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const signed = crypto.verify('sha256', Buffer.from(`${h}.${c}`), { key, dsaEncoding: 'ieee-p1363' }, b64url(s));
  if (!signed) throw new Error('the VAPID signature does not verify');
  const claims = JSON.parse(b64url(c).toString());
  const origin = new URL(endpoint).origin;
  if (claims.aud !== origin) throw new Error(`aud ${claims.aud} is not ${origin}`);
  const now = Math.floor(Date.now() / 1000);
  if (!(claims.exp > now && claims.exp <= now + 24 * 3600)) throw new Error(`exp ${claims.exp} not within 24 h`);
  if (!/^(mailto:|https:)/.test(claims.sub ?? '')) throw new Error(`sub ${claims.sub}`);
  return claims;
}

function decrypt(body, uaPrivate, uaPublic, auth) {
  // RFC 8188 header: salt (16) | rs (4) | idlen (1) | keyid (the sender's public key).
  const salt = body.subarray(0, 16);
  const rs = body.readUInt32BE(16);
  const idlen = body[20];
  const asPublic = body.subarray(21, 21 + idlen);
  const record = body.subarray(21 + idlen);
  if (idlen !== 65) throw new Error(`keyid of ${idlen} bytes`);
  if (record.length > rs) throw new Error('more than one record');
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.setPrivateKey(uaPrivate);
  const shared = ecdh.computeSecret(asPublic);
  // RFC 8291 section 3.4: IKM from the auth secret and both public keys.
  const keyInfo = Buffer.concat([Buffer.from('WebPush: info\0'), uaPublic, asPublic, Buffer.from([1])]);
  const ikm = hmac(hmac(auth, shared), keyInfo);
  // RFC 8188 section 2.2 and 2.3: content key and nonce (one record: sequence number 0).
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, Buffer.from('Content-Encoding: aes128gcm\0\x01')).subarray(0, 16);
  const nonce = hmac(prk, Buffer.from('Content-Encoding: nonce\0\x01')).subarray(0, 12);
  const decipher = crypto.createDecipheriv('aes-128-gcm', cek, nonce);
  decipher.setAuthTag(record.subarray(record.length - 16));
  const padded = Buffer.concat([decipher.update(record.subarray(0, record.length - 16)), decipher.final()]);
  // The last record ends with the delimiter 2, then zero padding.
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end -= 1;
  if (end < 0 || padded[end] !== 2) throw new Error('no last-record delimiter');
  return JSON.parse(padded.subarray(0, end).toString('utf8'));
}

let input = '';
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
for (const request of job.requests) {
  try {
    const claims = checkVapid(request.authorization, request.endpoint, job.vapid_public);
    const payload = decrypt(Buffer.from(request.body, 'base64'), b64url(job.ua_private), b64url(job.ua_public), b64url(job.auth));
    console.log(JSON.stringify({ ok: true, payload, claims }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e?.message ?? e) }));
  }
}
