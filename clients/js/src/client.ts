/**
 * `ChatClient`: the library's one public class. Holds what the app reads (status, unread count,
 * user, cursor, refusal), emits the events, and wires the parts: the socket and reconnecting
 * (connection.ts), catching up (catchup.ts), the token (tokens.ts), REST (rest.ts), push devices
 * (devices.ts), read receipts and typing (signals.ts). Persists the cursor per user and
 * deduplicates messages by id. Never logs a token or a message's text.
 */
import { CatchUp } from "./catchup.js";
import { Link, type Connection } from "./connection.js";
import { newerCursor } from "./cursor.js";
import { BoundedIdSet } from "./dedup.js";
import { listDevices, muteThread, registerDevice, unregisterDevice } from "./devices.js";
import { Emitter } from "./emitter.js";
import { jwtSubject } from "./jwt.js";
import type { ChatClientOptions } from "./options.js";
import { Rest } from "./rest.js";
import { readReceiptOf, TypingThrottle, TYPING_INTERVAL_MS, typingOf } from "./signals.js";
import { memoryStorage, type StorageAdapter } from "./storage.js";
import { describe, Tokens } from "./tokens.js";
import type {
  ChatError,
  ChatEvents,
  ChatMessage,
  ConnectionStatus,
  DeviceRegistration,
  FetchLike,
  HistoryPage,
  PushDevice,
  ReadState,
  RefusedEvent,
  ThreadUnread,
  WebSocketConstructor,
} from "./types.js";

export { ChatRestError } from "./rest.js";
export type { ChatClientOptions } from "./options.js";

const UPSTREAM_ERROR = "Real-time connection error";
const TOKEN_EXPIRED = "Access token expired";

/**
 * The school chat gateway client. Never gives up reconnecting (except on a client bug: 1008/1009/
 * 1003), resumes from the newest cursor it holds, falls back to REST offline sync when the socket
 * cannot resume, deduplicates by message id, refreshes the token on the open socket.
 */
export class ChatClient extends Emitter<ChatEvents> {
  private readonly opts: ChatClientOptions;
  private readonly storage: StorageAdapter;
  private readonly seen: BoundedIdSet;
  private readonly tokens: Tokens;
  private readonly rest: Rest;
  private readonly link: Link;
  private readonly catchUp: CatchUp;
  private readonly typingThrottle: TypingThrottle;
  private loaded: Promise<void> | null = null;
  private persistChain: Promise<void> = Promise.resolve();
  private storageFailed = false;
  private readonly threads = new Map<string, "subscribe_thread" | "unsubscribe_thread">();

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
    const f = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!f) throw new Error("no fetch implementation: pass options.fetch");
    const fetch = f.bind(globalThis) as FetchLike;
    this.storage = options.storage ?? memoryStorage();
    const base = options.url.replace(/\/+$/, "");
    const httpUrl = (options.restUrl ?? base).replace(/\/+$/, "").replace(/^ws(s?):/i, "http$1:");
    this.seen = new BoundedIdSet(options.dedupCapacity ?? 10_000);
    this.tokens = new Tokens(options.getToken, options.token, options.refreshMarginMs ?? 60_000);
    this.rest = new Rest(fetch, httpUrl, this.tokens);
    const wsUrl = base.replace(/^http(s?):/i, "ws$1:");
    this.link = new Link(
      { WS, fetch, wsUrl, opts: options, tokens: this.tokens, rest: this.rest },
      {
        prepare: (token) => this.ensureUser(token),
        cursor: () => this.cursor,
        frame: (conn, frame) => this.onFrame(conn, frame),
        status: (status) => this.setStatus(status),
        report: (error) => this.report(error),
        disconnect: (event) => this.emit("disconnect", event),
        refused: (refusal) => {
          this.refusal = refusal;
          this.emit("refused", refusal);
        },
      },
    );
    this.catchUp = new CatchUp(
      {
        rest: this.rest,
        current: (conn) => this.link.conn === conn,
        cursor: () => this.cursor,
        setCursor: (cursor) => this.setCursor(cursor),
        deliver: (message, source) => this.deliver(message, source),
        deliverFrame: (frame) => this.deliverFrame(frame),
        status: (status) => this.setStatus(status),
        live: (sync) => {
          this.setStatus("live");
          if (sync) this.emit("sync", sync);
          this.refreshUnreadCount().catch(() => undefined);
        },
        failed: (conn, message) => {
          this.report({ kind: "rest", message });
          this.link.drop(conn, 1006, "offline sync failed");
        },
      },
      options,
    );
    this.typingThrottle = new TypingThrottle(options.typingIntervalMs ?? TYPING_INTERVAL_MS);
  }

  // ---------------------------------------------------------------- connection

  /** Loads the stored cursor and connects. Idempotent. */
  start(): Promise<void> {
    if (this.link.mode === "running") return this.loaded ?? Promise.resolve();
    this.link.run();
    this.loaded = this.loadCursor().then(() => this.link.connect());
    return this.loaded;
  }

  /** Closes the socket for good (no reconnect). `start()` starts again. */
  stop(): void {
    this.link.close("stopped", "client stopped");
  }

  /** App going to background: closes the socket cleanly; `resume()` reconnects with the cursor. */
  pause(): void {
    if (this.link.mode !== "running") return;
    this.link.close("paused", "client paused");
  }

  /** App back in foreground (also restarts after a halt on a client bug). */
  resume(): void {
    const mode = this.link.mode;
    if (mode === "running") return;
    if (mode === "idle" || mode === "stopped") {
      void this.start();
      return;
    }
    this.link.run();
    void this.link.connect();
  }

  /** Receive this thread's messages (participants get them anyway; re-sent after every reconnect). */
  subscribeThread(threadId: string): void {
    this.threads.set(threadId, "subscribe_thread");
    if (this.link.open) this.link.send({ type: "subscribe_thread", thread_id: threadId });
  }

  /** Stop receiving this thread's messages on this device (re-sent after every reconnect). */
  unsubscribeThread(threadId: string): void {
    this.threads.set(threadId, "unsubscribe_thread");
    if (this.link.open) this.link.send({ type: "unsubscribe_thread", thread_id: threadId });
  }

  /** Hands the client a new token (e.g. from supabase's onAuthStateChange); pushed on the open socket. */
  setToken(token: string): void {
    this.tokens.set(token);
    const conn = this.link.conn;
    if (conn?.established) {
      this.link.send({ type: "access_token", token });
      this.tokens.scheduleRefresh(this.refreshTarget(conn));
    }
  }

  /**
   * Tells the thread's other participants that the user is typing. Call it on every keystroke:
   * at most one frame per thread goes every `typingIntervalMs` (2.5 s), within the gateway's limit
   * of one per 2 s.
   * Nothing is queued while offline (typing is only worth sending now). True when a frame went.
   */
  typing(threadId: string): boolean {
    if (!this.link.open || !this.typingThrottle.allow(threadId)) return false;
    this.link.send({ type: "typing", thread_id: threadId });
    return true;
  }

  // ---------------------------------------------------------------- REST

  /** Marks a thread read (REST, user's token); updates `unreadCount`. */
  async markRead(threadId: string): Promise<void> {
    await this.rest.markRead(threadId);
    await this.refreshUnreadCount();
  }

  /**
   * Who has read the thread, as far as the user may see it: the participants they may see by name
   * with their `last_read_at`, and "seen by N of M" for the newest `messages` (default 20).
   * `readReceipt` events say when it changes.
   */
  readState(threadId: string, options: { messages?: number } = {}): Promise<ReadState> {
    return this.rest.readState(threadId, options.messages);
  }

  /**
   * Whether the other participants may see when the user read the thread (on by default). Off,
   * the user is still counted in "seen by N of M" but never named. Returns the stored setting.
   */
  shareReadState(threadId: string, share: boolean): Promise<boolean> {
    return this.rest.shareReadState(threadId, share);
  }

  /**
   * Registers this device for pushes while the app is closed (REST, user's token). The same
   * device registered again keeps its id, so calling this on every start is right. Returns the
   * device's id, for `unregisterDevice` at sign-out.
   */
  registerDevice(device: DeviceRegistration): Promise<string> {
    return registerDevice(this.rest, device);
  }

  /** Removes one of the user's devices (sign-out on this device): it gets no more pushes. */
  unregisterDevice(deviceId: string): Promise<void> {
    return unregisterDevice(this.rest, deviceId);
  }

  /** The user's registered devices, newest first. */
  devices(): Promise<PushDevice[]> {
    return listDevices(this.rest);
  }

  /**
   * No pushes for the thread until `until` (live messages still arrive); `null` unmutes.
   * Returns the stored end of the mute.
   */
  muteThread(threadId: string, until: Date | string | null): Promise<string | null> {
    return muteThread(this.rest, threadId, until);
  }

  /**
   * One page of a thread's history, newest first (REST, read as the user): the latest page
   * without `before`, then older pages with `before: page.next` until `next` is null.
   * History messages are not `message` events (the app merges them by id).
   */
  history(threadId: string, options: { before?: string | null; limit?: number } = {}): Promise<HistoryPage> {
    return this.rest.history(threadId, options);
  }

  /** The unread count of each of the user's threads (also updates `unreadCount`). */
  async unreadByThread(): Promise<ThreadUnread[]> {
    const { total, threads } = await this.rest.unreadByThread();
    if (total !== null) this.setUnread(total);
    return threads;
  }

  /** Fetches the unread count (REST) and emits `unreadCount`. */
  async refreshUnreadCount(): Promise<number> {
    const n = await this.rest.unreadCount();
    this.setUnread(n);
    return n;
  }

  // ---------------------------------------------------------------- frames

  private onFrame(conn: Connection, frame: Record<string, unknown>): void {
    switch (frame.type) {
      case "connection_established":
        return this.onEstablished(conn, frame);
      case "new_message":
        if (!this.catchUp.held(conn, frame)) this.deliverFrame(frame);
        return;
      case "sync_complete":
        return this.catchUp.complete(conn, typeof frame.last_check_time === "string" ? frame.last_check_time : null);
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
      case "read_receipt": {
        const receipt = readReceiptOf(frame);
        if (receipt) this.emit("readReceipt", receipt);
        return;
      }
      case "typing": {
        const typing = typingOf(frame);
        if (typing && typing.user.user_id !== this.userId) this.emit("typing", typing);
        return;
      }
      case "error":
        return this.onError(String(frame.message ?? "error"));
      default:
        return; // pong, thread_subscribed, thread_unsubscribed, future frames
    }
  }

  private onError(message: string): void {
    if (message === UPSTREAM_ERROR) return this.report({ kind: "upstream", message });
    if (message === TOKEN_EXPIRED || /token/i.test(message)) {
      this.tokens.rejected = true;
      return this.report({ kind: "token", message });
    }
    this.report({ kind: "server", message });
  }

  private onEstablished(conn: Connection, frame: Record<string, unknown>): void {
    this.link.established(conn);
    this.refusal = null;
    const timestamp = typeof frame.timestamp === "string" ? frame.timestamp : null;
    const serverTime = timestamp === null ? NaN : Date.parse(timestamp);
    if (!Number.isNaN(serverTime)) this.tokens.skewMs = serverTime - Date.now();
    if (typeof frame.user_id === "string") this.userId = frame.user_id;
    for (const [threadId, type] of this.threads) this.link.send({ type, thread_id: threadId });
    this.tokens.scheduleRefresh(this.refreshTarget(conn));
    this.catchUp.begin(conn, timestamp);
  }

  private refreshTarget(conn: Connection) {
    return {
      open: () => this.link.conn === conn && conn.established,
      push: (token: string) => this.link.send({ type: "access_token", token }),
      failed: (message: string) => this.report({ kind: "token", message }),
    };
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

  // ---------------------------------------------------------------- cursor and user

  private storageKeyFor(user: string): string {
    return `${this.opts.storageKey ?? "school-chat"}:cursor:${user}`;
  }

  private async loadCursor(): Promise<void> {
    const user = jwtSubject(this.tokens.token);
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

  // ---------------------------------------------------------------- events

  private setUnread(n: number): void {
    if (!Number.isFinite(n)) return;
    this.unreadCount = n;
    this.emit("unreadCount", n);
  }

  private setStatus(status: ConnectionStatus): void {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  private report(error: ChatError): void {
    this.emit("error", error);
  }
}
