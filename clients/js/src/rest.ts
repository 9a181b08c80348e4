/**
 * The gateway's REST API, called with the user's token: one authenticated call (`call`, which
 * asks for a new token once when the gateway answers 401) and the chat endpoints the client uses.
 * Answers are `{status:"success", data}`; anything else is a `ChatRestError`. Never puts the token
 * anywhere but the `Authorization` header.
 */
import { readStateOf } from "./signals.js";
import type { Tokens } from "./tokens.js";
import type { ChatMessage, FetchLike, HistoryPage, ReadState, ThreadUnread } from "./types.js";

export class ChatRestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ChatRestError";
  }
}

/** One page of `GET /api/chat/offline-messages`. */
export interface OfflinePage {
  messages: ChatMessage[];
  lastCheckTime: string | null;
  hasMore: boolean;
}

export class Rest {
  constructor(
    private readonly fetchImpl: FetchLike,
    /** The http(s) base of the REST endpoints, without a trailing slash. */
    readonly baseUrl: string,
    private readonly tokens: Tokens,
  ) {}

  /** One call; resolves to the answer's body (null for 204). */
  async call(method: string, path: string, json?: unknown): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      const token = await this.tokens.valid();
      const headers: Record<string, string> = { Authorization: `Bearer ${token}`, Accept: "application/json" };
      if (json !== undefined) headers["Content-Type"] = "application/json";
      const response = await this.fetchImpl(this.baseUrl + path, {
        method,
        headers,
        ...(json === undefined ? {} : { body: JSON.stringify(json) }),
      });
      if (response.status === 204) return null;
      const body = (await response.json().catch(() => null)) as { status?: string; message?: string } | null;
      if (response.status === 401 && attempt === 0 && this.tokens.renewable) {
        this.tokens.rejected = true;
        continue;
      }
      if (!response.ok || body?.status !== "success") {
        throw new ChatRestError(response.status, body?.message ?? `HTTP ${response.status}`);
      }
      return body;
    }
  }

  /** The HTTP status of an unread-count call (for explaining a refused upgrade; no retry). */
  async status(token: string | null): Promise<number> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    return (await this.fetchImpl(`${this.baseUrl}/api/chat/unread-count`, { headers })).status;
  }

  async markRead(threadId: string): Promise<void> {
    await this.call("POST", `/api/chat/mark-read/${encodeURIComponent(threadId)}`);
  }

  async unreadCount(): Promise<number> {
    const body = (await this.call("GET", "/api/chat/unread-count")) as { data?: { unread_count?: number } };
    return Number(body?.data?.unread_count ?? 0);
  }

  async unreadByThread(): Promise<{ total: number | null; threads: ThreadUnread[] }> {
    const answer = (await this.call("GET", "/api/chat/unread-count?by_thread=true")) as {
      data?: { unread_count?: number; threads?: ThreadUnread[] };
    };
    const total = answer?.data?.unread_count;
    return { total: typeof total === "number" ? total : null, threads: answer?.data?.threads ?? [] };
  }

  async history(threadId: string, options: { before?: string | null; limit?: number }): Promise<HistoryPage> {
    const query = new URLSearchParams();
    if (options.before) query.set("before", options.before);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    const suffix = query.toString() ? `?${query}` : "";
    const answer = (await this.call(
      "GET",
      `/api/chat/threads/${encodeURIComponent(threadId)}/messages${suffix}`,
    )) as { data?: { messages?: ChatMessage[]; next?: unknown } };
    const next = answer?.data?.next;
    return { messages: answer?.data?.messages ?? [], next: typeof next === "string" && next ? next : null };
  }

  async offlineMessages(since: string): Promise<OfflinePage> {
    const body = (await this.call(
      "GET",
      `/api/chat/offline-messages?last_check_time=${encodeURIComponent(since)}`,
    )) as { data?: { messages?: ChatMessage[]; last_check_time?: string; has_more?: boolean } };
    return {
      messages: body?.data?.messages ?? [],
      lastCheckTime: body?.data?.last_check_time ?? null,
      hasMore: Boolean(body?.data?.has_more),
    };
  }

  async readState(threadId: string, messages?: number): Promise<ReadState> {
    const suffix = messages === undefined ? "" : `?messages=${encodeURIComponent(String(messages))}`;
    const answer = (await this.call("GET", `/api/chat/threads/${encodeURIComponent(threadId)}/read-state${suffix}`)) as {
      data?: unknown;
    };
    return readStateOf(answer?.data);
  }

  async shareReadState(threadId: string, share: boolean): Promise<boolean> {
    const answer = (await this.call("POST", `/api/chat/threads/${encodeURIComponent(threadId)}/read-state`, {
      share,
    })) as { data?: { share_read_state?: unknown } };
    const stored = answer?.data?.share_read_state;
    if (typeof stored !== "boolean") throw new ChatRestError(502, "shareReadState: no share_read_state in the answer");
    return stored;
  }
}
