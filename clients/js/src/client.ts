import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { compareCursors, newerCursor } from "./cursor.js";
import { BoundedIdSet } from "./dedup.js";
import { Emitter } from "./emitter.js";
import { jwtExpiryMs, jwtSubject } from "./jwt.js";
import { probeRefusal, refusalOfStatus, statusInError } from "./refusal.js";
import { memoryStorage, type StorageAdapter } from "./storage.js";
import type {
  DeviceRegistration,
  PushDevice,
  ChatError,
  ChatEvents,
  ChatMessage,
  ConnectionStatus,
  FetchLike,
  HistoryPage,
  RefusedEvent,
  ThreadUnread,
  TokenReason,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

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
  /** Random source for the jitter (tests). */
  random?: () => number;
}

interface Connection {
  ws: WebSocketLike;
  since: string | null;
  established: boolean;
  establishedAt: number;
  lastFrameAt: number;
  lastError: string;
  timers: ReturnType<typeof setTimeout>[];
  /** Set while catching up: frames are held here so that order per thread is kept. */
  syncing: { buffer: Record<string, unknown>[]; restRunning: boolean; timer: ReturnType<typeof setTimeout> | null } | null;
}

type Mode = "idle" | "running" | "paused" | "stopped" | "halted";

const UPSTREAM_ERROR = "Real-time connection error";
const TOKEN_EXPIRED = "Access token expired";
/** A connection that lasted this long resets the backoff. */
const HEALTHY_MS = 10_000;
const MIN_TOKEN_VALIDITY_MS = 5_000;
const DEFAULT_CATCH_UP_HORIZON_MS = 7 * 24 * 3600_000;

/**
 * The school chat gateway client. Never gives up reconnecting (except on a client bug: 1008/1009/
 * 1003), resumes from the newest cursor it holds, falls back to REST offline sync when the socket
 * cannot resume, deduplicates by message id, refreshes the token on the open socket.
 */
export class ChatClient extends Emitter<ChatEvents> {
  private readonly opts: ChatClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly fetchImpl: FetchLike;
  private readonly storage: StorageAdapter;
  private readonly wsUrl: string;
  private readonly httpUrl: string;
  private readonly seen: BoundedIdSet;

  private mode: Mode = "idle";
  private conn: Connection | null = null;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private token: string | null;
  private tokenRejected = false;
  private tokenRequest: Promise<string> | null = null;
  private clockSkewMs = 0;
  private loaded: Promise<void> | null = null;
  private persistChain: Promise<void> = Promise.resolve();
  private storageFailed = false;
  private useSince = true;
  private readonly threads = new Map<string, "subscribe_thread" | "unsubscribe_thread">();
  private readonly outbox: string[] = [];
  private sendBudget: number;
  private sendTimer: ReturnType<typeof setTimeout> | null = null;
  private connecting = false;

  /** Current connection state. */
  status: ConnectionStatus = "offline";
  /** The user's total unread count (null until first known). */
  unreadCount: number | null = null;
  /** The user id (`sub` of the token, confirmed by `connection_established`). */
  userId: string | null = null;
  /** The newest resume cursor held (persisted through `storage`). */
  cursor: string | null = null;
  /** Why the gateway refuses the connection (see the `refused` event); null once connected. */
  refusal: RefusedEvent | null = null;

  constructor(options: ChatClientOptions) {
    super();
    if (!options.getToken && !options.token) throw new Error("ChatClient needs getToken or token");
    this.opts = options;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package on Node 20)");
    this.WS = WS;
    const f = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!f) throw new Error("no fetch implementation: pass options.fetch");
    this.fetchImpl = f.bind(globalThis) as FetchLike;
    this.storage = options.storage ?? memoryStorage();
    const base = options.url.replace(/\/+$/, "");
    this.wsUrl = base.replace(/^http(s?):/i, "ws$1:");
    this.httpUrl = (options.restUrl ?? base).replace(/\/+$/, "").replace(/^ws(s?):/i, "http$1:");
    this.seen = new BoundedIdSet(options.dedupCapacity ?? 10_000);
    this.token = options.token ?? null;
    this.sendBudget = this.framesPerSecond();
  }

  // ---------------------------------------------------------------- public API

  /** Loads the stored cursor and connects. Idempotent. */
  start(): Promise<void> {
    if (this.mode === "running") return this.loaded ?? Promise.resolve();
    this.mode = "running";
    this.attempt = 0;
    this.loaded = this.loadCursor().then(() => this.connect());
    return this.loaded;
  }

  /** Closes the socket for good (no reconnect). `start()` starts again. */
  stop(): void {
    this.mode = "stopped";
    this.teardown(1000, "client stopped");
  }

  /** App going to background: closes the socket cleanly; `resume()` reconnects with the cursor. */
  pause(): void {
    if (this.mode !== "running") return;
    this.mode = "paused";
    this.teardown(1000, "client paused");
  }

  /** App back in foreground (also restarts after a halt on a client bug). */
  resume(): void {
    if (this.mode === "running") return;
    if (this.mode === "idle" || this.mode === "stopped") {
      void this.start();
      return;
    }
    this.mode = "running";
    this.attempt = 0;
    void this.connect();
  }

  /** Receive this thread's messages (participants get them anyway; re-sent after every reconnect). */
  subscribeThread(threadId: string): void {
    this.threads.set(threadId, "subscribe_thread");
    if (this.conn?.established) this.send({ type: "subscribe_thread", thread_id: threadId });
  }

  /** Stop receiving this thread's messages on this device (re-sent after every reconnect). */
  unsubscribeThread(threadId: string): void {
    this.threads.set(threadId, "unsubscribe_thread");
    if (this.conn?.established) this.send({ type: "unsubscribe_thread", thread_id: threadId });
  }

  /** Hands the client a new token (e.g. from supabase's onAuthStateChange); pushed on the open socket. */
  setToken(token: string): void {
    this.token = token;
    this.tokenRejected = false;
    if (this.conn?.established) {
      this.send({ type: "access_token", token });
      this.scheduleRefresh();
    }
  }

  /** Marks a thread read (REST, user's token); updates `unreadCount`. */
  async markRead(threadId: string): Promise<void> {
    await this.rest("POST", `/api/chat/mark-read/${encodeURIComponent(threadId)}`);
    await this.refreshUnreadCount();
  }

  /**
   * Registers this device for pushes while the app is closed (REST, user's token). The same
   * device registered again keeps its id, so calling this on every start is right. Returns the
   * device's id, for `unregisterDevice` at sign-out.
   */
  async registerDevice(device: DeviceRegistration): Promise<string> {
    const body =
      device.platform === "webpush" && "toJSON" in device.subscription
        ? { ...device, subscription: device.subscription.toJSON() }
        : device;
    const answer = (await this.rest("POST", "/api/chat/devices", body)) as { data?: { id?: string } };
    const id = answer?.data?.id;
    if (typeof id !== "string") throw new ChatRestError(502, "registerDevice: no device id in the answer");
    return id;
  }

  /** Removes one of the user's devices (sign-out on this device): it gets no more pushes. */
  async unregisterDevice(deviceId: string): Promise<void> {
    await this.rest("DELETE", `/api/chat/devices/${encodeURIComponent(deviceId)}`);
  }

  /** The user's registered devices, newest first. */
  async devices(): Promise<PushDevice[]> {
    const answer = (await this.rest("GET", "/api/chat/devices")) as { data?: { devices?: PushDevice[] } };
    return answer?.data?.devices ?? [];
  }

  /**
   * No pushes for the thread until `until` (live messages still arrive); `null` unmutes.
   * Returns the stored end of the mute.
   */
  async muteThread(threadId: string, until: Date | string | null): Promise<string | null> {
    const value = until instanceof Date ? until.toISOString() : until;
    const answer = (await this.rest("POST", `/api/chat/threads/${encodeURIComponent(threadId)}/mute`, {
      until: value,
    })) as { data?: { muted_until?: string | null } };
    return answer?.data?.muted_until ?? null;
  }

  /**
   * One page of a thread's history, newest first (REST, read as the user): the latest page
   * without `before`, then older pages with `before: page.next` until `next` is null.
   * History messages are not `message` events (the app merges them by id).
   */
  async history(threadId: string, options: { before?: string | null; limit?: number } = {}): Promise<HistoryPage> {
    const query = new URLSearchParams();
    if (options.before) query.set("before", options.before);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    const suffix = query.toString() ? `?${query}` : "";
    const answer = (await this.rest(
      "GET",
      `/api/chat/threads/${encodeURIComponent(threadId)}/messages${suffix}`,
    )) as { data?: { messages?: ChatMessage[]; next?: unknown } };
    const next = answer?.data?.next;
    return { messages: answer?.data?.messages ?? [], next: typeof next === "string" && next ? next : null };
  }

  /** The unread count of each of the user's threads (also updates `unreadCount`). */
  async unreadByThread(): Promise<ThreadUnread[]> {
    const answer = (await this.rest("GET", "/api/chat/unread-count?by_thread=true")) as {
      data?: { unread_count?: number; threads?: ThreadUnread[] };
    };
    if (typeof answer?.data?.unread_count === "number") this.setUnread(answer.data.unread_count);
    return answer?.data?.threads ?? [];
  }

  /** Fetches the unread count (REST) and emits `unreadCount`. */
  async refreshUnreadCount(): Promise<number> {
    const body = (await this.rest("GET", "/api/chat/unread-count")) as { data?: { unread_count?: number } };
    const n = Number(body?.data?.unread_count ?? 0);
    this.setUnread(n);
    return n;
  }

  // ---------------------------------------------------------------- connection

  private async connect(): Promise<void> {
    if (this.mode !== "running" || this.conn || this.connecting) return;
    this.clearReconnect();
    this.connecting = true;
    this.setStatus("connecting");
    let token: string;
    try {
      token = await this.validToken();
    } catch (error) {
      this.connecting = false;
      this.report({ kind: "token", message: `getToken failed: ${describe(error)}` });
      this.attempt++;
      this.scheduleReconnect(1006, "no token");
      return;
    }
    await this.ensureUser(token);
    this.connecting = false;
    if (this.mode !== "running" || this.conn) return;
    const since = this.useSince ? this.cursor : null;
    let url = `${this.wsUrl}/?token=${encodeURIComponent(token)}`;
    if (since) url += `&since=${encodeURIComponent(since)}`;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (error) {
      this.report({ kind: "server", message: `cannot open WebSocket: ${describe(error)}` });
      this.attempt++;
      this.scheduleReconnect(1006, "cannot open");
      return;
    }
    const conn: Connection = {
      ws,
      since,
      established: false,
      establishedAt: 0,
      lastFrameAt: Date.now(),
      lastError: "",
      timers: [],
      syncing: null,
    };
    this.conn = conn;
    // An upgrade that never completes (black-holed network) is abandoned, not waited on forever.
    conn.timers.push(
      setTimeout(() => {
        if (!conn.established) this.drop(conn, 1006, "connect timeout");
      }, this.opts.connectTimeoutMs ?? 15_000),
    );
    ws.onopen = () => {
      if (this.conn === conn) this.setStatus("open");
    };
    ws.onmessage = (event) => {
      if (this.conn !== conn) return;
      conn.lastFrameAt = Date.now();
      let frame: unknown;
      try {
        frame = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this.onFrame(conn, frame as Record<string, unknown>);
    };
    ws.onerror = (event) => {
      const e = event as { message?: unknown; error?: { message?: unknown } } | null;
      conn.lastError = String(e?.message ?? e?.error?.message ?? "");
    };
    ws.onclose = (event) => {
      if (this.conn === conn) this.onClose(conn, event?.code ?? 1006, event?.reason ?? "");
    };
  }

  private onFrame(conn: Connection, frame: Record<string, unknown>): void {
    switch (frame.type) {
      case "connection_established":
        return this.onEstablished(conn, frame);
      case "new_message":
        if (conn.syncing) {
          conn.syncing.buffer.push(frame);
          // Frames with a cursor come from a gateway that resumes: a long replay is progressing,
          // so the wait for sync_complete counts from the last one (an old gateway sends none).
          if (typeof frame.cursor === "string" && conn.syncing.timer) this.armSyncTimer(conn);
        } else {
          this.deliverFrame(frame);
        }
        return;
      case "sync_complete": {
        const cursor = typeof frame.last_check_time === "string" ? frame.last_check_time : null;
        if (conn.syncing) {
          const delivered = this.flush(conn);
          this.setCursor(cursor);
          this.goLive(conn, { via: "resume", delivered, cursor: this.cursor });
        } else {
          this.setCursor(cursor);
        }
        return;
      }
      case "thread_read": {
        const unread = typeof frame.unread_count === "number" ? frame.unread_count : null;
        if (unread !== null) this.setUnread(unread);
        this.emit("threadRead", {
          threadId: String(frame.thread_id ?? ""),
          lastReadAt: typeof frame.last_read_at === "string" ? frame.last_read_at : null,
          unreadCount: unread,
        });
        return;
      }
      case "error": {
        const message = String(frame.message ?? "error");
        if (message === UPSTREAM_ERROR) return this.report({ kind: "upstream", message });
        if (message === TOKEN_EXPIRED || /token/i.test(message)) {
          this.tokenRejected = true;
          return this.report({ kind: "token", message });
        }
        return this.report({ kind: "server", message });
      }
      default:
        return; // pong, thread_subscribed, thread_unsubscribed, future frames
    }
  }

  private onEstablished(conn: Connection, frame: Record<string, unknown>): void {
    conn.established = true;
    conn.establishedAt = Date.now();
    this.refusal = null;
    const serverTime = typeof frame.timestamp === "string" ? Date.parse(frame.timestamp) : NaN;
    if (!Number.isNaN(serverTime)) this.clockSkewMs = serverTime - Date.now();
    if (typeof frame.user_id === "string") this.userId = frame.user_id;
    for (const [threadId, type] of this.threads) this.send({ type, thread_id: threadId });
    this.scheduleRefresh();
    this.startPing(conn);
    if (conn.since) {
      // Resume: hold frames until sync_complete; without it in time, catch up through REST.
      conn.syncing = { buffer: [], restRunning: false, timer: null };
      this.setStatus("syncing");
      this.armSyncTimer(conn);
    } else if (this.cursor) {
      // We hold a cursor but did not send it (the gateway refused it): catch up through REST now.
      conn.syncing = { buffer: [], restRunning: false, timer: null };
      this.setStatus("syncing");
      void this.restCatchUp(conn);
    } else if (this.opts.initialCursor === undefined && this.catchUpHorizonMs() > 0) {
      // First start: catch up on the horizon through REST (frames are held meanwhile).
      const now = Number.isNaN(serverTime) ? Date.now() : serverTime;
      conn.syncing = { buffer: [], restRunning: false, timer: null };
      this.setStatus("syncing");
      void this.restCatchUp(conn, new Date(now - this.catchUpHorizonMs()).toISOString());
    } else {
      // Very first connection: everything from now on arrives on this socket.
      this.setCursor(this.opts.initialCursor ?? (typeof frame.timestamp === "string" ? frame.timestamp : null));
      this.goLive(conn, null);
    }
  }

  private armSyncTimer(conn: Connection): void {
    const syncing = conn.syncing;
    if (!syncing) return;
    if (syncing.timer) clearTimeout(syncing.timer);
    syncing.timer = setTimeout(() => {
      syncing.timer = null;
      void this.restCatchUp(conn);
    }, this.opts.syncTimeoutMs ?? 5_000);
  }

  private goLive(conn: Connection, sync: ChatEvents["sync"] | null): void {
    if (conn.syncing?.timer) clearTimeout(conn.syncing.timer);
    conn.syncing = null;
    this.setStatus("live");
    if (sync) this.emit("sync", sync);
    this.refreshUnreadCount().catch(() => undefined);
  }

  /** Delivers the frames held while syncing, in arrival order; returns how many were new. */
  private flush(conn: Connection): number {
    const buffer = conn.syncing?.buffer ?? [];
    if (conn.syncing?.timer) clearTimeout(conn.syncing.timer);
    conn.syncing = null;
    let delivered = 0;
    for (const frame of buffer) if (this.deliverFrame(frame)) delivered++;
    return delivered;
  }

  private catchUpHorizonMs(): number {
    const horizon = this.opts.catchUpHorizonMs ?? DEFAULT_CATCH_UP_HORIZON_MS;
    return Number.isFinite(horizon) && horizon > 0 ? horizon : 0;
  }

  private async restCatchUp(conn: Connection, from?: string): Promise<void> {
    if (this.conn !== conn || !conn.syncing || conn.syncing.restRunning) return;
    conn.syncing.restRunning = true;
    if (conn.syncing.timer) clearTimeout(conn.syncing.timer);
    conn.syncing.timer = null;
    let delivered = 0;
    try {
      let cursor = from ?? conn.since ?? this.cursor;
      for (let page = 0; cursor && page < 10_000; page++) {
        const body = (await this.rest(
          "GET",
          `/api/chat/offline-messages?last_check_time=${encodeURIComponent(cursor)}`,
        )) as { data?: { messages?: ChatMessage[]; last_check_time?: string; has_more?: boolean } };
        if (this.conn !== conn || !conn.syncing) return; // closed, or sync_complete won meanwhile
        const messages = [...(body?.data?.messages ?? [])].sort((a, b) => compareCursors(a.created_at, b.created_at));
        for (const message of messages) if (this.deliver(message, "rest")) delivered++;
        const next = body?.data?.last_check_time ?? null;
        this.setCursor(next);
        if (!body?.data?.has_more || !next || next === cursor) break;
        cursor = next;
      }
    } catch (error) {
      if (this.conn !== conn) return;
      this.report({ kind: "rest", message: `offline sync failed: ${describe(error)}` });
      // Retry the whole catch-up through a fresh connection (buffered frames are dropped: the
      // cursor did not move past them, so they come again).
      this.drop(conn, 1006, "offline sync failed");
      return;
    }
    if (this.conn !== conn || !conn.syncing) return;
    delivered += this.flush(conn);
    this.goLive(conn, { via: "rest", delivered, cursor: this.cursor });
  }

  private deliverFrame(frame: Record<string, unknown>): boolean {
    const data = frame.data as ChatMessage | undefined;
    if (!data || typeof data !== "object") return false;
    const fresh = this.deliver(data, "socket");
    if (typeof frame.cursor === "string") this.setCursor(frame.cursor);
    return fresh;
  }

  private deliver(message: ChatMessage, source: "socket" | "rest"): boolean {
    if (!message || typeof message.id !== "string") return false;
    if (!this.seen.add(message.id)) return false;
    this.emit("message", { message, source });
    if (this.unreadCount !== null && this.userId && message.sender_id !== this.userId) {
      this.setUnread(this.unreadCount + 1);
    }
    return true;
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    this.detach(conn);
    if (this.mode !== "running") {
      this.setStatus("offline");
      return;
    }
    const healthy = conn.established && Date.now() - conn.establishedAt >= HEALTHY_MS;
    this.attempt = healthy ? 0 : this.attempt + 1;
    switch (code) {
      case 4001: // token expired on the open socket: reconnecting with it is pointless
        this.tokenRejected = true;
        this.attempt = Math.min(this.attempt, 1);
        break;
      case 4008: // too slow to read: resume from the cursor
        break;
      case 1008:
      case 1009:
      case 1003: {
        this.mode = "halted";
        const what = code === 1008 ? "rate limit exceeded" : code === 1009 ? "message too large" : "binary frame";
        this.report({ kind: "fatal", code, message: `gateway closed the socket (${code} ${what}): a client bug; not reconnecting` });
        this.setStatus("offline");
        this.emit("disconnect", { code, reason, reconnectInMs: null });
        return;
      }
      default:
        if (!conn.established) {
          const error = conn.lastError;
          if (/\b401\b/.test(error) || this.attempt % 3 === 0) this.tokenRejected = true;
          if (/\b400\b/.test(error) && conn.since) this.useSince = false; // cursor refused: REST catch-up instead
          void this.explainRefusal(error);
        }
    }
    this.scheduleReconnect(code, reason);
  }

  /** After a failed upgrade: finds out why (see refusal.ts) and emits `refused`. */
  private async explainRefusal(error: string): Promise<void> {
    const status = statusInError(error);
    let refusal = status === null ? null : refusalOfStatus(status);
    if (!refusal && status === null) {
      const token = this.token;
      refusal = await probeRefusal({
        fetch: this.fetchImpl,
        gateway: this.wsUrl.replace(/^ws(s?):/i, "http$1:"),
        pageOrigin: (globalThis as { location?: { origin?: string } }).location?.origin ?? null,
        restStatus: async () => {
          const headers: Record<string, string> = { Accept: "application/json" };
          if (token) headers.Authorization = `Bearer ${token}`;
          return (await this.fetchImpl(`${this.httpUrl}/api/chat/unread-count`, { headers })).status;
        },
      }).catch(() => null);
    }
    // Connected meanwhile, or stopped: the answer is stale.
    if (!refusal || this.mode !== "running" || this.conn?.established) return;
    if (refusal.reason === "token") this.tokenRejected = true;
    this.refusal = refusal;
    this.emit("refused", refusal);
  }

  private scheduleReconnect(code: number, reason: string): void {
    if (this.mode !== "running") return;
    this.clearReconnect();
    const delay = backoffDelay(this.attempt, this.opts.backoff, this.opts.random);
    this.setStatus("offline");
    this.emit("disconnect", { code, reason, reconnectInMs: delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.connect();
    }, delay);
  }

  /** Drops a connection that is dead or unusable and reconnects. */
  private drop(conn: Connection, code: number, reason: string): void {
    if (this.conn !== conn) return;
    try {
      conn.ws.close(1000, reason);
    } catch {
      /* already closed */
    }
    this.onClose(conn, code, reason);
  }

  private detach(conn: Connection): void {
    for (const t of conn.timers) clearTimeout(t);
    conn.timers = [];
    if (conn.syncing?.timer) clearTimeout(conn.syncing.timer);
    conn.syncing = null;
    conn.ws.onopen = conn.ws.onmessage = conn.ws.onerror = conn.ws.onclose = null;
    if (this.conn === conn) this.conn = null;
    this.outbox.length = 0;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  private teardown(code: number, reason: string): void {
    this.clearReconnect();
    const conn = this.conn;
    if (conn) {
      this.detach(conn);
      try {
        conn.ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
    this.setStatus("offline");
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private startPing(conn: Connection): void {
    const every = this.opts.pingIntervalMs ?? 25_000;
    const tick = () => {
      if (this.conn !== conn) return;
      if (Date.now() - conn.lastFrameAt > every * 2) {
        this.drop(conn, 1006, "no answer to ping");
        return;
      }
      this.send({ type: "ping" });
      conn.timers.push(setTimeout(tick, every));
    };
    conn.timers.push(setTimeout(tick, every));
  }

  // ---------------------------------------------------------------- sending

  private framesPerSecond(): number {
    return Math.max(1, this.opts.maxFramesPerSecond ?? 10);
  }

  private send(frame: Record<string, unknown>): void {
    this.outbox.push(JSON.stringify(frame));
    this.pump();
  }

  private pump(): void {
    const conn = this.conn;
    while (conn && this.outbox.length && this.sendBudget >= 1) {
      try {
        conn.ws.send(this.outbox.shift() as string);
      } catch {
        return;
      }
      this.sendBudget -= 1;
    }
    if (this.sendTimer === null && (this.outbox.length || this.sendBudget < this.framesPerSecond())) {
      this.sendTimer = setTimeout(() => {
        this.sendTimer = null;
        this.sendBudget = this.framesPerSecond();
        this.pump();
      }, 1000);
    }
  }

  // ---------------------------------------------------------------- tokens

  private now(): number {
    return Date.now() + this.clockSkewMs;
  }

  private async validToken(): Promise<string> {
    const exp = jwtExpiryMs(this.token);
    const usable = this.token && !this.tokenRejected && (exp === null || exp - this.now() > MIN_TOKEN_VALIDITY_MS);
    if (usable || !this.opts.getToken) {
      if (!this.token) throw new Error("no token");
      return this.token;
    }
    const reason: TokenReason = !this.token ? "initial" : this.tokenRejected ? "rejected" : "expired";
    return this.fetchToken(reason);
  }

  private fetchToken(reason: TokenReason): Promise<string> {
    if (!this.tokenRequest) {
      const getToken = this.opts.getToken as NonNullable<ChatClientOptions["getToken"]>;
      this.tokenRequest = Promise.resolve()
        .then(() => getToken(reason))
        .then((token) => {
          if (typeof token !== "string" || !token) throw new Error("getToken returned no token");
          if (token !== this.token) this.tokenRejected = false;
          this.token = token;
          return token;
        })
        .finally(() => {
          this.tokenRequest = null;
        });
    }
    return this.tokenRequest;
  }

  /** Refresh ~refreshMarginMs before exp and push the new token on the open socket. */
  private scheduleRefresh(now = false): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const exp = jwtExpiryMs(this.token);
    if (exp === null || !this.opts.getToken) return;
    const left = exp - this.now();
    if (left <= 0) return; // the gateway will close with 4001; we fetch a new one then
    const margin = this.opts.refreshMarginMs ?? 60_000;
    const delay = now ? 0 : Math.max(1_000, left - margin);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      const conn = this.conn;
      this.fetchToken("expiring").then(
        (token) => {
          if (this.conn !== conn || !conn?.established) return;
          const newExp = jwtExpiryMs(token);
          if (newExp === null || newExp > exp) {
            this.send({ type: "access_token", token });
            this.scheduleRefresh();
          } else {
            this.retryRefresh(exp);
          }
        },
        (error) => {
          this.report({ kind: "token", message: `token refresh failed: ${describe(error)}` });
          this.retryRefresh(exp);
        },
      );
    }, delay);
  }

  /** getToken gave nothing newer: ask again later while the current token still lives. */
  private retryRefresh(exp: number): void {
    const left = exp - this.now();
    if (left <= 0 || !this.conn) return;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (this.conn?.established) this.scheduleRefresh(true);
    }, Math.max(1_000, Math.min(left / 2, 30_000)));
  }

  // ---------------------------------------------------------------- cursor, user, REST

  private storageKeyFor(user: string): string {
    return `${this.opts.storageKey ?? "school-chat"}:cursor:${user}`;
  }

  private async loadCursor(): Promise<void> {
    const user = jwtSubject(this.token);
    if (user) await this.loadCursorFor(user);
  }

  private async loadCursorFor(user: string): Promise<void> {
    this.userId = user;
    try {
      const stored = await this.storage.getItem(this.storageKeyFor(user));
      this.cursor = newerCursor(this.cursor, stored ?? null);
    } catch (error) {
      this.report({ kind: "storage", message: `cannot read the cursor: ${describe(error)}` });
    }
  }

  /** A token of another user (sign-out, sign-in) starts from that user's own cursor. */
  private async ensureUser(token: string): Promise<void> {
    const user = jwtSubject(token);
    if (!user || user === this.userId) return;
    if (this.userId) {
      this.cursor = null;
      this.seen.clear();
      this.unreadCount = null;
    }
    await this.loadCursorFor(user);
  }

  private setCursor(candidate: string | null | undefined): void {
    const next = newerCursor(this.cursor, candidate);
    if (next === this.cursor || !next) return;
    this.cursor = next;
    const user = this.userId;
    if (!user) return;
    const key = this.storageKeyFor(user);
    this.persistChain = this.persistChain
      .then(() => this.storage.setItem(key, next))
      .catch((error) => {
        if (!this.storageFailed) this.report({ kind: "storage", message: `cannot store the cursor: ${describe(error)}` });
        this.storageFailed = true;
      });
  }

  private setUnread(n: number): void {
    if (!Number.isFinite(n)) return;
    this.unreadCount = n;
    this.emit("unreadCount", n);
  }

  private async rest(method: string, path: string, json?: unknown): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      const token = await this.validToken();
      const headers: Record<string, string> = { Authorization: `Bearer ${token}`, Accept: "application/json" };
      if (json !== undefined) headers["Content-Type"] = "application/json";
      const response = await this.fetchImpl(this.httpUrl + path, {
        method,
        headers,
        ...(json === undefined ? {} : { body: JSON.stringify(json) }),
      });
      if (response.status === 204) return null;
      const body = (await response.json().catch(() => null)) as { status?: string; message?: string } | null;
      if (response.status === 401 && attempt === 0 && this.opts.getToken) {
        this.tokenRejected = true;
        continue;
      }
      if (!response.ok || body?.status !== "success") {
        throw new ChatRestError(response.status, body?.message ?? `HTTP ${response.status}`);
      }
      return body;
    }
  }

  // ---------------------------------------------------------------- events

  private setStatus(status: ConnectionStatus): void {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  private report(error: ChatError): void {
    this.emit("error", error);
  }
}

export class ChatRestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ChatRestError";
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
