import { useCallback, useEffect, useRef, useState } from "react";
import { ChatClient, type ChatClientOptions } from "./client.js";
import type { ChatError, ChatMessage, ConnectionStatus, HistoryPage, RefusedEvent, ThreadUnread } from "./types.js";

export interface UseChatOptions extends ChatClientOptions {
  /** Threads to subscribe to (re-sent after every reconnect by the client). */
  threads?: string[];
  /** How many recent messages the hook keeps in state (default 200; 0 keeps none). */
  keep?: number;
  /** Called for every new message (deduplicated), also when `keep` is 0. */
  onMessage?: (message: ChatMessage) => void;
}

export interface UseChat {
  client: ChatClient | null;
  status: ConnectionStatus;
  unreadCount: number | null;
  /** The most recent messages, oldest first (at most `keep`). */
  messages: ChatMessage[];
  lastError: ChatError | null;
  /** Why the gateway refuses the connection (origin, token, limit, unreachable); null once connected. */
  refusal: RefusedEvent | null;
  markRead: (threadId: string) => Promise<void>;
  /** One page of a thread's history, newest first (see `ChatClient.history`). */
  history: (threadId: string, options?: { before?: string | null; limit?: number }) => Promise<HistoryPage>;
  /** Each thread's unread count. */
  unreadByThread: () => Promise<ThreadUnread[]>;
  /**
   * The thread's next older page, oldest first: the latest page on the first call, then older
   * ones; `done` once there is nothing older (then further calls return no messages).
   */
  loadOlder: (threadId: string, limit?: number) => Promise<{ messages: ChatMessage[]; done: boolean }>;
  pause: () => void;
  resume: () => void;
}

/**
 * One `ChatClient` for the component's lifetime (re-created when `url` changes): started on mount,
 * stopped on unmount. Pause/resume it from your AppState / visibilitychange handler.
 */
export function useChat(options: UseChatOptions): UseChat {
  const latest = useRef(options);
  latest.current = options;
  const [client, setClient] = useState<ChatClient | null>(null);
  const [status, setStatus] = useState<ConnectionStatus>("offline");
  const [unreadCount, setUnread] = useState<number | null>(null);
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [lastError, setLastError] = useState<ChatError | null>(null);
  const [refusal, setRefusal] = useState<RefusedEvent | null>(null);
  /** Per thread: the cursor of the next older page (null: nothing older). */
  const older = useRef(new Map<string, string | null>());

  useEffect(() => {
    const { threads: _threads, keep: _keep, onMessage: _onMessage, ...clientOptions } = latest.current;
    const c = new ChatClient({
      ...clientOptions,
      getToken: clientOptions.getToken ? (reason) => latest.current.getToken!(reason) : undefined,
    });
    const offs = [
      c.on("status", (s) => {
        setStatus(s);
        if (s === "live") setRefusal(null);
      }),
      c.on("refused", setRefusal),
      c.on("unreadCount", setUnread),
      c.on("error", setLastError),
      c.on("message", ({ message }) => {
        latest.current.onMessage?.(message);
        const keep = latest.current.keep ?? 200;
        if (keep > 0) setMessages((list) => [...list, message].slice(-keep));
      }),
    ];
    older.current = new Map();
    setClient(c);
    void c.start();
    return () => {
      offs.forEach((off) => off());
      c.stop();
    };
  }, [options.url]);

  const threadKey = (options.threads ?? []).join(",");
  useEffect(() => {
    if (!client) return;
    for (const thread of options.threads ?? []) client.subscribeThread(thread);
  }, [client, threadKey]);

  const markRead = useCallback(async (threadId: string) => {
    if (client) await client.markRead(threadId);
  }, [client]);
  const history = useCallback(
    async (threadId: string, opts?: { before?: string | null; limit?: number }) => {
      if (!client) throw new Error("useChat: not started yet");
      return client.history(threadId, opts);
    },
    [client],
  );
  const unreadByThread = useCallback(async () => {
    if (!client) throw new Error("useChat: not started yet");
    return client.unreadByThread();
  }, [client]);
  const loadOlder = useCallback(
    async (threadId: string, limit?: number) => {
      if (!client) throw new Error("useChat: not started yet");
      const cursors = older.current;
      if (cursors.has(threadId) && cursors.get(threadId) === null) return { messages: [], done: true };
      const page = await client.history(threadId, { before: cursors.get(threadId), limit });
      cursors.set(threadId, page.next);
      return { messages: [...page.messages].reverse(), done: page.next === null };
    },
    [client],
  );
  const pause = useCallback(() => client?.pause(), [client]);
  const resume = useCallback(() => client?.resume(), [client]);

  return {
    client,
    status,
    unreadCount,
    messages,
    lastError,
    refusal,
    markRead,
    history,
    unreadByThread,
    loadOlder,
    pause,
    resume,
  };
}
