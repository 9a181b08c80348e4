/** The options of `ChatClient`: where the gateway is, how to get tokens, and the client's limits. */
import type { BackoffOptions } from "./backoff.js";
import type { StorageAdapter } from "./storage.js";
import type { FetchLike, TokenReason, WebSocketConstructor } from "./types.js";

export interface ChatClientOptions {
  /** The gateway: `https://chat.example.org` or `wss://chat.example.org` (REST and WebSocket share the host). */
  url: string;
  /** Base of the REST endpoints when they are not on `url`'s host (e.g. a same-origin proxy for a web page). */
  restUrl?: string;
  /**
   * Returns a valid Supabase access token. Called at start, ~`refreshMarginMs` before the current
   * one expires (the new one is pushed on the open socket), and when the gateway refused the
   * token (close 4001, HTTP 401). With supabase-js:
   * `async () => (await supabase.auth.getSession()).data.session!.access_token`.
   */
  getToken?: (reason: TokenReason) => string | Promise<string>;
  /** A token to start with (optional when `getToken` is given). */
  token?: string;
  /** Where the resume cursor is kept (default: memory). See `localStorageAdapter`, `asyncStorageAdapter`. */
  storage?: StorageAdapter;
  /** Prefix of the storage key (default `school-chat`); the key is `<prefix>:cursor:<user id>`. */
  storageKey?: string;
  /** A WebSocket implementation when there is no global one (Node 20: `import WebSocket from "ws"`). */
  WebSocket?: WebSocketConstructor;
  /** A fetch implementation when there is no global one. */
  fetch?: FetchLike;
  /** Reconnect backoff (full jitter): first ceiling `baseMs` (500), doubling, capped at `capMs` (30 000). */
  backoff?: BackoffOptions;
  /** Refresh the token this long before `exp` (default 60 000 ms). */
  refreshMarginMs?: number;
  /** After reconnecting with `since`, wait this long for `sync_complete` before falling back to REST (default 5 000 ms). */
  syncTimeoutMs?: number;
  /** Application-level ping interval; a socket silent for two intervals is dropped (default 25 000 ms). */
  pingIntervalMs?: number;
  /** Give up on a connection attempt that has not been established after this long (default 15 000 ms). */
  connectTimeoutMs?: number;
  /** How many message ids are remembered for deduplication (default 10 000). */
  dedupCapacity?: number;
  /** Frames sent per second at most (the gateway closes with 1008 above its limit; default 10). */
  maxFramesPerSecond?: number;
  /**
   * Cursor to start from when none is stored. Without one, the first start catches up through
   * REST offline sync on the last `catchUpHorizonMs`, so `message` events cover what arrived
   * while the app was not installed or signed in.
   */
  initialCursor?: string;
  /** How far back a first start (no stored cursor, no `initialCursor`) catches up (default 7 days; 0: not at all). */
  catchUpHorizonMs?: number;
  /**
   * `typing(threadId)` sends at most one frame per thread this often (default 2 500 ms: the
   * gateway's limit of 2 s plus room for network jitter), so calling it on every keystroke is right.
   * Below 2 000 ms the gateway answers with error frames.
   */
  typingIntervalMs?: number;
  /** Random source for the jitter (tests). */
  random?: () => number;
}
