/**
 * Frames to the gateway, at most `perSecond` a second (the gateway closes a socket with 1008 above
 * its limit): a queue drained into the current socket as the budget allows. Frames queued for a
 * socket that closes are dropped (`clear`); what must survive a reconnect is re-sent by its owner.
 */
import type { WebSocketLike } from "./types.js";

export class Outbox {
  private readonly queue: string[] = [];
  private budget: number;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly perSecond: number,
    /** The socket frames go to now (null while there is none). */
    private readonly socket: () => WebSocketLike | null,
  ) {
    this.budget = perSecond;
  }

  send(frame: Record<string, unknown>): void {
    this.queue.push(JSON.stringify(frame));
    this.pump();
  }

  /** Forgets what was queued for a socket that is gone. */
  clear(): void {
    this.queue.length = 0;
  }

  private pump(): void {
    const ws = this.socket();
    while (ws && this.queue.length && this.budget >= 1) {
      try {
        ws.send(this.queue.shift() as string);
      } catch {
        return;
      }
      this.budget -= 1;
    }
    if (this.timer === null && (this.queue.length || this.budget < this.perSecond)) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.budget = this.perSecond;
        this.pump();
      }, 1000);
    }
  }
}
