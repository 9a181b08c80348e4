/**
 * Why a WebSocket upgrade failed. Node's `ws` reports the HTTP status of a refused upgrade
 * ("Unexpected server response: 403"); browsers report nothing at all (an `error` event, then
 * close 1006), so there the gateway is asked, through requests a page may make:
 *
 * 1. `GET /healthz` on the gateway, cross-origin (`mode: "cors"`): readable only when the gateway
 *    admits the page's origin (it echoes `Access-Control-Allow-Origin` for the origins of
 *    `CORS_ALLOWED_ORIGINS` only, and refuses upgrades from any other origin). Unreadable, but
 *    answered with `mode: "no-cors"`: the origin is not allowed. No answer either way: unreachable.
 * 2. A REST call with the token: 401 means the token is refused.
 * 3. Origin and token accepted, yet the upgrade failed: the remaining refusals of the upgrade are
 *    429 (the user's connections) and 503 (the instance's connections, or shutting down).
 *
 * Never sends the token anywhere but the REST endpoint the client already uses.
 */
import type { FetchLike, RefusalReason, RefusedEvent } from "./types.js";

const ORIGIN_MESSAGE =
  "the gateway refuses this page's origin: add it to the gateway's CORS_ALLOWED_ORIGINS";
const TOKEN_MESSAGE = "the gateway refuses the access token (401): sign in again";
const LIMIT_MESSAGE =
  "the gateway refuses more connections (too many for this user or this instance, or it is shutting down)";
const UNREACHABLE_MESSAGE = "the gateway does not answer";

/** The HTTP status in a WebSocket error message ("Unexpected server response: 403"), or null. */
export function statusInError(error: string): number | null {
  const m = /\b(?:response|status)[^0-9]{0,4}([45]\d\d)\b/i.exec(error);
  return m ? Number(m[1]) : null;
}

/** The refusal an upgrade's HTTP status stands for (null for a status that is not one). */
export function refusalOfStatus(status: number): RefusedEvent | null {
  switch (status) {
    case 401:
      return { reason: "token", message: TOKEN_MESSAGE, status };
    case 403:
      return { reason: "origin", message: ORIGIN_MESSAGE, status };
    case 429:
      return { reason: "limit", message: "too many connections for this user (429)", status };
    case 503:
      return { reason: "limit", message: "the gateway is full or shutting down (503)", status };
    default:
      return null;
  }
}

export interface ProbeTarget {
  fetch: FetchLike;
  /** The gateway's own http(s) base (where the WebSocket goes). */
  gateway: string;
  /** A REST call with the user's token: resolves to its HTTP status (throws when unanswered). */
  restStatus: () => Promise<number>;
  /** The page's origin, when running in a browser (`location.origin`). */
  pageOrigin: string | null;
}

/** Asks the gateway why an upgrade failed (see the module comment); null when it cannot tell. */
export async function probeRefusal(target: ProbeTarget): Promise<RefusedEvent | null> {
  const health = `${target.gateway}/healthz`;
  const crossOrigin = target.pageOrigin !== null && target.pageOrigin !== originOf(target.gateway);
  if (crossOrigin) {
    const readable = await target.fetch(health, { mode: "cors" }).then(
      () => true,
      () => false,
    );
    if (!readable) {
      const answered = await target.fetch(health, { mode: "no-cors" }).then(
        () => true,
        () => false,
      );
      return refusal(answered ? "origin" : "unreachable");
    }
  } else {
    const answered = await target.fetch(health).then(
      () => true,
      () => false,
    );
    if (!answered) return refusal("unreachable");
  }
  const status = await target.restStatus().catch(() => null);
  if (status === 401) return refusal("token");
  if (status === null || status < 200 || status >= 300) return null;
  return refusal("limit");
}

function refusal(reason: RefusalReason): RefusedEvent {
  const message = {
    origin: ORIGIN_MESSAGE,
    token: TOKEN_MESSAGE,
    limit: LIMIT_MESSAGE,
    unreachable: UNREACHABLE_MESSAGE,
  }[reason];
  return { reason, message };
}

function originOf(url: string): string | null {
  try {
    return new URL(url).origin;
  } catch {
    return null;
  }
}
