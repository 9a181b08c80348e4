/**
 * The socket to the gateway, and keeping one: opening it with the token (and the cursor to resume
 * from), abandoning an upgrade that never completes, pinging, acting on close codes, reconnecting
 * with jittered backoff forever (except after a client bug: 1008/1009/1003), finding out why an
 * upgrade was refused, and sending frames within the rate limit. Frames it reads go to its owner;
 * it knows nothing of messages, cursors or threads, and never reports a token.
 */
import { backoffDelay } from "./backoff.js";
import type { ChatClientOptions } from "./options.js";
import { Outbox } from "./outbox.js";
import { probeRefusal, refusalOfStatus, statusInError } from "./refusal.js";
import type { Rest } from "./rest.js";
import { describe, type Tokens } from "./tokens.js";
import type {
  ChatError,
  ConnectionStatus,
  DisconnectEvent,
  FetchLike,
  RefusedEvent,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** One socket, from the attempt to open it until it closes. */
export interface Connection {
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

export type Mode = "idle" | "running" | "paused" | "stopped" | "halted";

/** What the connection needs from the client that owns it. */
export interface ConnectionOwner {
  /** Before each attempt, with the token it will use (another user starts from their own cursor). */
  prepare(token: string): Promise<void>;
  /** The cursor to resume from. */
  cursor(): string | null;
  frame(conn: Connection, frame: Record<string, unknown>): void;
  status(status: ConnectionStatus): void;
  report(error: ChatError): void;
  disconnect(event: DisconnectEvent): void;
  refused(refusal: RefusedEvent): void;
}

export interface LinkConfig {
  WS: WebSocketConstructor;
  fetch: FetchLike;
  /** ws(s) base of the gateway. */
  wsUrl: string;
  opts: ChatClientOptions;
  tokens: Tokens;
  rest: Rest;
}

/** A connection that lasted this long resets the backoff. */
const HEALTHY_MS = 10_000;

export class Link {
  mode: Mode = "idle";
  conn: Connection | null = null;
  /** False once the gateway refused the cursor (400): catch up through REST instead. */
  useSince = true;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private connecting = false;
  private readonly outbox: Outbox;

  constructor(
    private readonly cfg: LinkConfig,
    private readonly owner: ConnectionOwner,
  ) {
    const perSecond = Math.max(1, cfg.opts.maxFramesPerSecond ?? 10);
    this.outbox = new Outbox(perSecond, () => this.conn?.ws ?? null);
  }

  /** Connected and past `connection_established`. */
  get open(): boolean {
    return this.conn?.established ?? false;
  }

  /** From now on, keep a connection (start, resume). */
  run(): void {
    this.mode = "running";
    this.attempt = 0;
  }

  /** Closes the socket and stays closed (`stopped`, `paused`) until `run` + `connect`. */
  close(mode: "stopped" | "paused", reason: string): void {
    this.mode = mode;
    this.clearReconnect();
    const conn = this.conn;
    if (conn) {
      this.detach(conn);
      try {
        conn.ws.close(1000, reason);
      } catch {
        /* already closed */
      }
    }
    this.owner.status("offline");
  }

  send(frame: Record<string, unknown>): void {
    this.outbox.send(frame);
  }

  async connect(): Promise<void> {
    if (this.mode !== "running" || this.conn || this.connecting) return;
    this.clearReconnect();
    this.connecting = true;
    this.owner.status("connecting");
    let token: string;
    try {
      token = await this.cfg.tokens.valid();
    } catch (error) {
      this.connecting = false;
      this.owner.report({ kind: "token", message: `getToken failed: ${describe(error)}` });
      this.attempt++;
      this.scheduleReconnect(1006, "no token");
      return;
    }
    await this.owner.prepare(token);
    this.connecting = false;
    if (this.mode !== "running" || this.conn) return;
    const since = this.useSince ? this.owner.cursor() : null;
    let url = `${this.cfg.wsUrl}/?token=${encodeURIComponent(token)}`;
    if (since) url += `&since=${encodeURIComponent(since)}`;
    let ws: WebSocketLike;
    try {
      ws = new this.cfg.WS(url);
    } catch (error) {
      this.owner.report({ kind: "server", message: `cannot open WebSocket: ${describe(error)}` });
      this.attempt++;
      this.scheduleReconnect(1006, "cannot open");
      return;
    }
    this.attach(ws, since);
  }

  private attach(ws: WebSocketLike, since: string | null): void {
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
      }, this.cfg.opts.connectTimeoutMs ?? 15_000),
    );
    ws.onopen = () => {
      if (this.conn === conn) this.owner.status("open");
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
      if (frame && typeof frame === "object") this.owner.frame(conn, frame as Record<string, unknown>);
    };
    ws.onerror = (event) => {
      const e = event as { message?: unknown; error?: { message?: unknown } } | null;
      conn.lastError = String(e?.message ?? e?.error?.message ?? "");
    };
    ws.onclose = (event) => {
      if (this.conn === conn) this.onClose(conn, event?.code ?? 1006, event?.reason ?? "");
    };
  }

  /** `connection_established` arrived on `conn`: it counts as healthy from now, and is pinged. */
  established(conn: Connection): void {
    conn.established = true;
    conn.establishedAt = Date.now();
    this.startPing(conn);
  }

  /** Drops a connection that is dead or unusable and reconnects. */
  drop(conn: Connection, code: number, reason: string): void {
    if (this.conn !== conn) return;
    try {
      conn.ws.close(1000, reason);
    } catch {
      /* already closed */
    }
    this.onClose(conn, code, reason);
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    this.detach(conn);
    if (this.mode !== "running") {
      this.owner.status("offline");
      return;
    }
    const healthy = conn.established && Date.now() - conn.establishedAt >= HEALTHY_MS;
    this.attempt = healthy ? 0 : this.attempt + 1;
    switch (code) {
      case 4001: // token expired on the open socket: reconnecting with it is pointless
        this.cfg.tokens.rejected = true;
        this.attempt = Math.min(this.attempt, 1);
        break;
      case 4008: // too slow to read: resume from the cursor
        break;
      case 1008:
      case 1009:
      case 1003: {
        this.mode = "halted";
        const what = code === 1008 ? "rate limit exceeded" : code === 1009 ? "message too large" : "binary frame";
        this.owner.report({ kind: "fatal", code, message: `gateway closed the socket (${code} ${what}): a client bug; not reconnecting` });
        this.owner.status("offline");
        this.owner.disconnect({ code, reason, reconnectInMs: null });
        return;
      }
      default:
        if (!conn.established) {
          const error = conn.lastError;
          if (/\b401\b/.test(error) || this.attempt % 3 === 0) this.cfg.tokens.rejected = true;
          if (/\b400\b/.test(error) && conn.since) this.useSince = false; // cursor refused: REST catch-up instead
          void this.explainRefusal(error);
        }
    }
    this.scheduleReconnect(code, reason);
  }

  /** After a failed upgrade: finds out why (see refusal.ts) and tells the owner. */
  private async explainRefusal(error: string): Promise<void> {
    const status = statusInError(error);
    let refusal = status === null ? null : refusalOfStatus(status);
    if (!refusal && status === null) {
      const token = this.cfg.tokens.token;
      refusal = await probeRefusal({
        fetch: this.cfg.fetch,
        gateway: this.cfg.wsUrl.replace(/^ws(s?):/i, "http$1:"),
        pageOrigin: (globalThis as { location?: { origin?: string } }).location?.origin ?? null,
        restStatus: () => this.cfg.rest.status(token),
      }).catch(() => null);
    }
    // Connected meanwhile, or stopped: the answer is stale.
    if (!refusal || this.mode !== "running" || this.conn?.established) return;
    if (refusal.reason === "token") this.cfg.tokens.rejected = true;
    this.owner.refused(refusal);
  }

  private scheduleReconnect(code: number, reason: string): void {
    if (this.mode !== "running") return;
    this.clearReconnect();
    const delay = backoffDelay(this.attempt, this.cfg.opts.backoff, this.cfg.opts.random);
    this.owner.status("offline");
    this.owner.disconnect({ code, reason, reconnectInMs: delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.connect();
    }, delay);
  }

  private detach(conn: Connection): void {
    for (const t of conn.timers) clearTimeout(t);
    conn.timers = [];
    if (conn.syncing?.timer) clearTimeout(conn.syncing.timer);
    conn.syncing = null;
    conn.ws.onopen = conn.ws.onmessage = conn.ws.onerror = conn.ws.onclose = null;
    if (this.conn === conn) this.conn = null;
    this.outbox.clear();
    this.cfg.tokens.cancelRefresh();
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private startPing(conn: Connection): void {
    const every = this.cfg.opts.pingIntervalMs ?? 25_000;
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
}
