/**
 * Read receipts and typing on the wire: the `read_receipt` and `typing` frames and the read-state
 * answer parsed into the library's types (anything malformed is null, never an exception), and the
 * throttle that keeps `typing` frames within the gateway's limit of one per thread per 2 s. Holds
 * no connection and sends nothing itself.
 */
import type { ChatUser, MessageSeen, ReadReceiptEvent, ReadState, ReadStateParticipant, TypingEvent } from "./types.js";

/** The gateway's limit: one `typing` frame per thread per 2 s per user. */
export const TYPING_LIMIT_MS = 2_000;
/**
 * How often the client sends `typing` per thread by default: the limit plus room for frames that
 * travel at different speeds (the gateway measures the 2 s on arrival). Still well within the 5 s
 * receivers show it for.
 */
export const TYPING_INTERVAL_MS = TYPING_LIMIT_MS + 500;

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const count = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : null);

export function userOf(value: unknown): ChatUser | null {
  if (!value || typeof value !== "object") return null;
  const v = value as Record<string, unknown>;
  const id = str(v.user_id);
  if (!id) return null;
  return { user_id: id, full_name: str(v.full_name), role: str(v.role) };
}

/** A `read_receipt` frame, or null when it is not a well-formed one. */
export function readReceiptOf(frame: Record<string, unknown>): ReadReceiptEvent | null {
  const threadId = str(frame.thread_id);
  const seenBy = count(frame.seen_by);
  const of = count(frame.of);
  if (!threadId || seenBy === null || of === null) return null;
  return {
    threadId,
    reader: userOf(frame.reader),
    lastReadAt: str(frame.last_read_at),
    messageId: str(frame.message_id),
    seenBy,
    of,
  };
}

/** A `typing` frame, or null when it is not a well-formed one. */
export function typingOf(frame: Record<string, unknown>): TypingEvent | null {
  const threadId = str(frame.thread_id);
  const user = userOf(frame.user);
  return threadId && user ? { threadId, user } : null;
}

/** The `data` of a read-state answer (rows that are not well formed are left out). */
export function readStateOf(data: unknown): ReadState {
  const d = (data && typeof data === "object" ? data : {}) as Record<string, unknown>;
  const participants: ReadStateParticipant[] = [];
  for (const row of Array.isArray(d.participants) ? d.participants : []) {
    const user = userOf(row);
    if (user) participants.push({ ...user, last_read_at: str((row as Record<string, unknown>).last_read_at) });
  }
  const messages: MessageSeen[] = [];
  for (const row of Array.isArray(d.messages) ? d.messages : []) {
    const r = (row ?? {}) as Record<string, unknown>;
    const id = str(r.message_id);
    const seenBy = count(r.seen_by);
    const of = count(r.of);
    if (id && seenBy !== null && of !== null) messages.push({ message_id: id, seen_by: seenBy, of });
  }
  return { participants, messages };
}

/** At most one `typing` per thread per `intervalMs` (per client; the gateway limits per user). */
export class TypingThrottle {
  private readonly last = new Map<string, number>();

  constructor(
    private readonly intervalMs = TYPING_INTERVAL_MS,
    private readonly now: () => number = () => Date.now(),
  ) {}

  /** True (and remembered) when a frame for `threadId` may go now. */
  allow(threadId: string): boolean {
    const now = this.now();
    const last = this.last.get(threadId);
    if (last !== undefined && now - last < this.intervalMs) return false;
    this.last.set(threadId, now);
    if (this.last.size > 256) this.forgetOlderThan(now - this.intervalMs);
    return true;
  }

  private forgetOlderThan(time: number): void {
    for (const [thread, at] of this.last) if (at <= time) this.last.delete(thread);
  }
}
