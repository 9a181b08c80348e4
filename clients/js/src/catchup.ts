/**
 * Catching up after (re)connecting, so that `message` events cover everything, once and in order
 * per thread: the gateway's resume replay up to `sync_complete` (live frames held meanwhile), REST
 * offline sync when the replay does not finish in time or the cursor could not be sent, and a
 * first start's catch-up on the last `catchUpHorizonMs`. Owns the frames held on the connection
 * being caught up; never opens or closes a socket itself (a failed REST catch-up asks its owner to
 * drop the connection, and the next one catches up again).
 */
import type { Connection } from "./connection.js";
import { compareCursors } from "./cursor.js";
import type { ChatClientOptions } from "./options.js";
import type { Rest } from "./rest.js";
import { describe } from "./tokens.js";
import type { ChatMessage, ConnectionStatus, SyncEvent } from "./types.js";

const DEFAULT_CATCH_UP_HORIZON_MS = 7 * 24 * 3600_000;

/** What catching up needs from the client that owns it. */
export interface CatchUpOwner {
  rest: Rest;
  /** `conn` is still the client's connection. */
  current(conn: Connection): boolean;
  cursor(): string | null;
  setCursor(cursor: string | null | undefined): void;
  /** Emits a message unless already delivered; true when it was new. */
  deliver(message: ChatMessage, source: "socket" | "rest"): boolean;
  /** Delivers a `new_message` frame (and moves the cursor); true when it was new. */
  deliverFrame(frame: Record<string, unknown>): boolean;
  status(status: ConnectionStatus): void;
  /** Caught up (`sync` is null after a first connection that had nothing to catch up on). */
  live(sync: SyncEvent | null): void;
  /** The REST catch-up failed: report it and drop `conn` (the next connection catches up). */
  failed(conn: Connection, message: string): void;
}

export class CatchUp {
  constructor(
    private readonly owner: CatchUpOwner,
    private readonly opts: ChatClientOptions,
  ) {}

  /** `connection_established` on `conn` (`serverTime`: its `timestamp`): catch up, or go live. */
  begin(conn: Connection, serverTime: string | null): void {
    const server = serverTime === null ? NaN : Date.parse(serverTime);
    if (conn.since) {
      // Resume: hold frames until sync_complete; without it in time, catch up through REST.
      this.hold(conn);
      this.armTimer(conn);
    } else if (this.owner.cursor()) {
      // We hold a cursor but did not send it (the gateway refused it): catch up through REST now.
      this.hold(conn);
      void this.rest(conn);
    } else if (this.opts.initialCursor === undefined && this.horizonMs() > 0) {
      // First start: catch up on the horizon through REST (frames are held meanwhile).
      const now = Number.isNaN(server) ? Date.now() : server;
      this.hold(conn);
      void this.rest(conn, new Date(now - this.horizonMs()).toISOString());
    } else {
      // Very first connection: everything from now on arrives on this socket.
      this.owner.setCursor(this.opts.initialCursor ?? serverTime);
      this.goLive(conn, null);
    }
  }

  /** A `new_message` frame: held while catching up (true), else for the caller to deliver (false). */
  held(conn: Connection, frame: Record<string, unknown>): boolean {
    if (!conn.syncing) return false;
    conn.syncing.buffer.push(frame);
    // Frames with a cursor come from a gateway that resumes: a long replay is progressing, so the
    // wait for sync_complete counts from the last one (an old gateway sends none).
    if (typeof frame.cursor === "string" && conn.syncing.timer) this.armTimer(conn);
    return true;
  }

  /** `sync_complete` with its `last_check_time`. */
  complete(conn: Connection, cursor: string | null): void {
    if (!conn.syncing) {
      this.owner.setCursor(cursor);
      return;
    }
    const delivered = this.flush(conn);
    this.owner.setCursor(cursor);
    this.goLive(conn, { via: "resume", delivered, cursor: this.owner.cursor() });
  }

  private hold(conn: Connection): void {
    conn.syncing = { buffer: [], restRunning: false, timer: null };
    this.owner.status("syncing");
  }

  private horizonMs(): number {
    const horizon = this.opts.catchUpHorizonMs ?? DEFAULT_CATCH_UP_HORIZON_MS;
    return Number.isFinite(horizon) && horizon > 0 ? horizon : 0;
  }

  private armTimer(conn: Connection): void {
    const syncing = conn.syncing;
    if (!syncing) return;
    if (syncing.timer) clearTimeout(syncing.timer);
    syncing.timer = setTimeout(() => {
      syncing.timer = null;
      void this.rest(conn);
    }, this.opts.syncTimeoutMs ?? 5_000);
  }

  private goLive(conn: Connection, sync: SyncEvent | null): void {
    if (conn.syncing?.timer) clearTimeout(conn.syncing.timer);
    conn.syncing = null;
    this.owner.live(sync);
  }

  /** Delivers the frames held while syncing, in arrival order; returns how many were new. */
  private flush(conn: Connection): number {
    const buffer = conn.syncing?.buffer ?? [];
    if (conn.syncing?.timer) clearTimeout(conn.syncing.timer);
    conn.syncing = null;
    let delivered = 0;
    for (const frame of buffer) if (this.owner.deliverFrame(frame)) delivered++;
    return delivered;
  }

  private async rest(conn: Connection, from?: string): Promise<void> {
    if (!this.owner.current(conn) || !conn.syncing || conn.syncing.restRunning) return;
    conn.syncing.restRunning = true;
    if (conn.syncing.timer) clearTimeout(conn.syncing.timer);
    conn.syncing.timer = null;
    let delivered = 0;
    try {
      let cursor = from ?? conn.since ?? this.owner.cursor();
      for (let page = 0; cursor && page < 10_000; page++) {
        const body = await this.owner.rest.offlineMessages(cursor);
        if (!this.owner.current(conn) || !conn.syncing) return; // closed, or sync_complete won meanwhile
        const messages = [...body.messages].sort((a, b) => compareCursors(a.created_at, b.created_at));
        for (const message of messages) if (this.owner.deliver(message, "rest")) delivered++;
        const next = body.lastCheckTime;
        this.owner.setCursor(next);
        if (!body.hasMore || !next || next === cursor) break;
        cursor = next;
      }
    } catch (error) {
      if (!this.owner.current(conn)) return;
      // Retry the whole catch-up through a fresh connection (held frames are dropped: the cursor
      // did not move past them, so they come again).
      this.owner.failed(conn, `offline sync failed: ${describe(error)}`);
      return;
    }
    if (!this.owner.current(conn) || !conn.syncing) return;
    delivered += this.flush(conn);
    this.goLive(conn, { via: "rest", delivered, cursor: this.owner.cursor() });
  }
}
