/** A chat message as the gateway delivers it (WebSocket `new_message.data` and REST offline sync). */
export interface ChatMessage {
  id: string;
  thread_id: string;
  sender_id: string;
  content: string;
  message_type: string;
  created_at: string;
  sender?: { full_name: string | null; role: string | null } | null;
  [extra: string]: unknown;
}

/**
 * - `connecting`: opening a socket (or fetching a token first);
 * - `open`: socket open, waiting for `connection_established`;
 * - `syncing`: catching up on what was missed (resume replay, or REST fallback);
 * - `live`: caught up, messages arrive as they are posted;
 * - `offline`: no socket (waiting to retry, paused, stopped, or halted on a client bug).
 */
export type ConnectionStatus = "connecting" | "open" | "syncing" | "live" | "offline";

export interface MessageEvent {
  message: ChatMessage;
  /** `socket` (live or resume replay) or `rest` (offline-sync fallback). */
  source: "socket" | "rest";
}

export interface ThreadReadEvent {
  threadId: string;
  lastReadAt: string | null;
  /** The user's total unread count after the change. */
  unreadCount: number | null;
}

export type ChatErrorKind =
  /** The gateway lost Supabase Realtime; it heals itself and fills the gap. Informational. */
  | "upstream"
  /** An `error` frame from the gateway (refused subscription, malformed frame...). */
  | "server"
  /** Getting or using an access token failed. */
  | "token"
  /** A REST call failed. */
  | "rest"
  /** The gateway closed the socket because of a client bug (1008 rate limit, 1009 too large, 1003 binary): not retried. */
  | "fatal"
  /** Persisting the cursor failed. */
  | "storage";

export interface ChatError {
  kind: ChatErrorKind;
  message: string;
  /** WebSocket close code or HTTP status, when there is one. */
  code?: number;
}

export interface DisconnectEvent {
  code: number;
  reason: string;
  /** Delay before the next attempt, or null when the client will not reconnect by itself. */
  reconnectInMs: number | null;
}

export interface SyncEvent {
  /** `resume`: the gateway replayed from `since`; `rest`: offline-messages fallback. */
  via: "resume" | "rest";
  /** Messages delivered by this catch-up (after deduplication). */
  delivered: number;
  cursor: string | null;
}

/**
 * Why the gateway refused the WebSocket (found out after a failed upgrade: browsers do not expose
 * the HTTP status of a refused upgrade, so the client asks the gateway):
 * - `origin`: the page's origin is not in the gateway's `CORS_ALLOWED_ORIGINS`;
 * - `token`: the access token was refused (401);
 * - `limit`: too many connections (429 per user, 503 per instance), or the instance is shutting down;
 * - `unreachable`: no answer from the gateway at all.
 */
export type RefusalReason = "origin" | "token" | "limit" | "unreachable";

export interface RefusedEvent {
  reason: RefusalReason;
  /** A sentence for people (what to change, when there is something to change). */
  message: string;
  /** The HTTP status of the refused upgrade, when the platform exposes it (Node's `ws`). */
  status?: number;
}

/** One page of a thread's history, newest first. */
export interface HistoryPage {
  messages: ChatMessage[];
  /** Pass as `before` for the next older page; null when there is nothing older. */
  next: string | null;
}

/** One thread's unread count (`GET /api/chat/unread-count?by_thread=true`). */
export interface ThreadUnread {
  thread_id: string;
  unread_count: number;
  /** The newest message's time (RFC 3339), null for a thread without messages. */
  last_message_at: string | null;
}

/** A participant as read receipts and typing name them. */
export interface ChatUser {
  user_id: string;
  full_name: string | null;
  role: string | null;
}

/** A participant whose read state the user may see (`GET /api/chat/threads/{id}/read-state`). */
export interface ReadStateParticipant extends ChatUser {
  /** When they last read the thread (RFC 3339), null if never. */
  last_read_at: string | null;
}

/** How many of the participants other than its sender have read a message. */
export interface MessageSeen {
  message_id: string;
  seen_by: number;
  of: number;
}

/**
 * A thread's read state as the user may see it: the participants they may see by name (a parent
 * in a group thread sees none; one who turned sharing off is counted, not named), and the counts
 * of the newest messages, newest first.
 */
export interface ReadState {
  participants: ReadStateParticipant[];
  messages: MessageSeen[];
}

/**
 * A participant read further (`read_receipt` frame). `seenBy` of `of` is about the thread's newest
 * message, `messageId`; `reader` is null where the user may only see counts, or where the reader
 * does not share (receipts are coalesced: it names the latest reader, the counts include all).
 */
export interface ReadReceiptEvent {
  threadId: string;
  reader: ChatUser | null;
  lastReadAt: string | null;
  /** The thread's newest message, which the counts are about (null from a gateway that omits it). */
  messageId: string | null;
  seenBy: number;
  of: number;
}

/** Someone else is typing in a thread (`typing` frame); treat it as over after 5 s without another. */
export interface TypingEvent {
  threadId: string;
  user: ChatUser;
}

export interface ChatEvents {
  message: MessageEvent;
  /** Someone else read further in one of the user's threads (read state the user may see). */
  readReceipt: ReadReceiptEvent;
  /** Someone else is typing in one of the user's threads. */
  typing: TypingEvent;
  /** The gateway refused the connection, and why (`status` stays `offline` meanwhile). */
  refused: RefusedEvent;
  threadRead: ThreadReadEvent;
  status: ConnectionStatus;
  error: ChatError;
  unreadCount: number;
  disconnect: DisconnectEvent;
  sync: SyncEvent;
}

/** Why the client asks for a token: apps may refresh their session only when it is `expired`/`rejected`. */
export type TokenReason = "initial" | "expiring" | "expired" | "rejected";

/** The part of the WebSocket API the client uses (browsers, React Native, Node ≥ 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type FetchLike = (
  input: string,
  init?: { method?: string; headers?: Record<string, string>; body?: string; mode?: "cors" | "no-cors" },
) => Promise<{ status: number; ok: boolean; json(): Promise<unknown> }>;

/** A platform a device receives pushes on. */
export type PushPlatform = "webpush" | "fcm" | "apns" | "expo";

/**
 * A device to register for pushes to offline recipients: a provider token (FCM registration
 * token, APNs device token in hex, Expo push token), or a browser's Web Push subscription
 * (`PushSubscription` itself or its `toJSON()`).
 */
export type DeviceRegistration =
  | { platform: "fcm" | "apns" | "expo"; token: string; locale?: string }
  | {
      platform: "webpush";
      subscription: { endpoint: string; keys?: { p256dh?: string; auth?: string } } | { toJSON(): unknown };
      locale?: string;
    };

/** One of the user's registered devices (never a Web Push subscription's keys). */
export interface PushDevice {
  id: string;
  platform: PushPlatform;
  token: string | null;
  endpoint: string | null;
  locale: string | null;
  created_at: string;
  last_used_at: string | null;
}
