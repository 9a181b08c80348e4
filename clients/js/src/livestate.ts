/**
 * What a UI shows about the other participants of a thread, kept from the client's events: the
 * read state with live receipts merged in ("seen by N of M" for the newest message, readers by
 * name where the user may see them), and who is typing, each entry expiring 5 s after their last
 * `typing` and cleared when their message arrives. State only: no I/O, no React; `useChat` and
 * plain pages use it alike.
 */
import { compareCursors } from "./cursor.js";
import type { ChatUser, MessageSeen, ReadReceiptEvent, ReadState, ReadStateParticipant } from "./types.js";

/** Clients treat a `typing` as over this long after it arrived (unless another one came). */
export const TYPING_EXPIRY_MS = 5_000;

/** A thread's read state kept current by live receipts. */
export interface ThreadReceipts extends ReadState {
  /** "seen by `seenBy` of `of`" for the thread's newest message (null until known). */
  seenBy: number | null;
  of: number | null;
  /** The latest live receipt (null before the first). */
  latest: ReadReceiptEvent | null;
}

/** A fetched read state as `ThreadReceipts` (its newest message's counts on top). */
export function receiptsOf(state: ReadState): ThreadReceipts {
  const newest = state.messages[0];
  return { ...state, seenBy: newest?.seen_by ?? null, of: newest?.of ?? null, latest: null };
}

/**
 * `receipt` merged into what is known of its thread: its counts become its message's (the
 * thread's newest: added first when the read state predates it), and a named reader's
 * `last_read_at` moves forward (a reader not known yet is added). Never mutates.
 */
export function mergeReceipt(current: ThreadReceipts | undefined, receipt: ReadReceiptEvent): ThreadReceipts {
  const base = current ?? { participants: [], messages: [], seenBy: null, of: null, latest: null };
  let participants = base.participants;
  const reader = receipt.reader;
  if (reader) {
    const at = receipt.lastReadAt;
    const known = participants.some((p) => p.user_id === reader.user_id);
    participants = known
      ? participants.map((p) =>
          p.user_id === reader.user_id && at && (!p.last_read_at || compareCursors(at, p.last_read_at) > 0)
            ? { ...p, last_read_at: at }
            : p,
        )
      : [...participants, { ...reader, last_read_at: at }];
  }
  return { participants, messages: mergeCounts(base.messages, receipt), seenBy: receipt.seenBy, of: receipt.of, latest: receipt };
}

/** The receipt's counts on its message (newest first: a message not listed yet goes first). */
function mergeCounts(messages: MessageSeen[], receipt: ReadReceiptEvent): MessageSeen[] {
  const id = receipt.messageId ?? messages[0]?.message_id;
  if (!id) return messages;
  const counts = { message_id: id, seen_by: receipt.seenBy, of: receipt.of };
  return messages.some((m) => m.message_id === id)
    ? messages.map((m) => (m.message_id === id ? counts : m))
    : [counts, ...messages];
}

/**
 * The participants the user may see by name who have read `message`: everyone but its sender
 * whose `last_read_at` is at or after its `created_at`.
 */
export function readersOf(
  participants: ReadStateParticipant[],
  message: { sender_id: string; created_at: string },
): ReadStateParticipant[] {
  return participants.filter(
    (p) => p.user_id !== message.sender_id && p.last_read_at !== null && compareCursors(p.last_read_at, message.created_at) >= 0,
  );
}

/** Who is typing, per thread; `onChange` runs whenever someone starts or stops. */
export class TypingTracker {
  private readonly threads = new Map<string, Map<string, { user: ChatUser; timer: ReturnType<typeof setTimeout> }>>();

  constructor(
    private readonly onChange: () => void = () => undefined,
    private readonly expiryMs = TYPING_EXPIRY_MS,
  ) {}

  /** A `typing` event: `user` types in `threadId` for the next 5 s. */
  typing(threadId: string, user: ChatUser): void {
    let thread = this.threads.get(threadId);
    if (!thread) this.threads.set(threadId, (thread = new Map()));
    const entry = thread.get(user.user_id);
    if (entry) clearTimeout(entry.timer);
    const timer = setTimeout(() => this.stop(threadId, user.user_id), this.expiryMs);
    thread.set(user.user_id, { user, timer });
    if (!entry) this.onChange();
  }

  /** A message from `userId` arrived in `threadId`: they are done typing it. */
  stop(threadId: string, userId: string): void {
    const thread = this.threads.get(threadId);
    const entry = thread?.get(userId);
    if (!thread || !entry) return;
    clearTimeout(entry.timer);
    thread.delete(userId);
    if (thread.size === 0) this.threads.delete(threadId);
    this.onChange();
  }

  /** Who types in `threadId`, in the order they started. */
  users(threadId: string): ChatUser[] {
    return [...(this.threads.get(threadId)?.values() ?? [])].map((e) => e.user);
  }

  /** Everyone typing, by thread (threads where nobody types are left out). */
  snapshot(): Record<string, ChatUser[]> {
    const all: Record<string, ChatUser[]> = {};
    for (const threadId of this.threads.keys()) all[threadId] = this.users(threadId);
    return all;
  }

  /** Forgets everyone (sign-out, unmount); no `onChange`. */
  clear(): void {
    for (const thread of this.threads.values()) for (const entry of thread.values()) clearTimeout(entry.timer);
    this.threads.clear();
  }
}
