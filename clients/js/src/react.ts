import { useCallback, useEffect, useRef, useState } from "react";
import { ChatClient, type ChatClientOptions } from "./client.js";
import { mergeReceipt, receiptsOf, TypingTracker, type ThreadReceipts } from "./livestate.js";
import type {
  ChatError,
  ChatMessage,
  ChatUser,
  ConnectionStatus,
  HistoryPage,
  ReadState,
  RefusedEvent,
  ThreadUnread,
} from "./types.js";

/** A thread's read state is fetched again this long after a new message in it (newest changed). */
const READ_STATE_REFETCH_MS = 300;

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
  /**
   * Fetches the thread's read state (see `ChatClient.readState`) and keeps it in `receipts`, current
   * from then on: live receipts are merged in, and a new message in the thread fetches it again.
   */
  readState: (threadId: string, options?: { messages?: number }) => Promise<ReadState>;
  /**
   * Per thread: the read state with the latest live receipt merged in; `seenBy` of `of` is the
   * thread's newest message's "seen by N of M". Threads appear once `readState` was asked for
   * them, or once a receipt came.
   */
  receipts: Record<string, ThreadReceipts>;
  /** Per thread: who is typing now (each expires 5 s after their last `typing`, or with their message). */
  typing: Record<string, ChatUser[]>;
  /** Tells the thread that the user types (call it on every keystroke; throttled by the client). */
  sendTyping: (threadId: string) => void;
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
  const [receipts, setReceipts] = useState<Record<string, ThreadReceipts>>({});
  const [typing, setTyping] = useState<Record<string, ChatUser[]>>({});
  /** Per thread: the cursor of the next older page (null: nothing older). */
  const older = useRef(new Map<string, string | null>());
  /** Threads whose read state the app asked for (kept current), with the pending refetch. */
  const watched = useRef(new Map<string, { messages?: number; timer: ReturnType<typeof setTimeout> | null }>());

  useEffect(() => {
    const { threads: _threads, keep: _keep, onMessage: _onMessage, ...clientOptions } = latest.current;
    const c = new ChatClient({
      ...clientOptions,
      getToken: clientOptions.getToken ? (reason) => latest.current.getToken!(reason) : undefined,
    });
    const tracker = new TypingTracker(() => setTyping(tracker.snapshot()));
    const refetch = (threadId: string) => {
      const watch = watched.current.get(threadId);
      if (!watch || watch.timer) return;
      watch.timer = setTimeout(() => {
        watch.timer = null;
        c.readState(threadId, { messages: watch.messages }).then(
          (state) => setReceipts((all) => ({ ...all, [threadId]: { ...receiptsOf(state), latest: all[threadId]?.latest ?? null } })),
          (error: unknown) => setLastError({ kind: "rest", message: `read state: ${String(error)}` }),
        );
      }, READ_STATE_REFETCH_MS);
    };
    const offs = [
      c.on("status", (s) => {
        setStatus(s);
        if (s === "live") setRefusal(null);
      }),
      c.on("refused", setRefusal),
      c.on("unreadCount", setUnread),
      c.on("error", setLastError),
      c.on("message", ({ message }) => {
        tracker.stop(message.thread_id, message.sender_id);
        refetch(message.thread_id);
        latest.current.onMessage?.(message);
        const keep = latest.current.keep ?? 200;
        if (keep > 0) setMessages((list) => [...list, message].slice(-keep));
      }),
      c.on("readReceipt", (receipt) =>
        setReceipts((all) => ({ ...all, [receipt.threadId]: mergeReceipt(all[receipt.threadId], receipt) })),
      ),
      c.on("typing", ({ threadId, user }) => tracker.typing(threadId, user)),
    ];
    older.current = new Map();
    watched.current = new Map();
    setReceipts({});
    setTyping({});
    setClient(c);
    void c.start();
    return () => {
      offs.forEach((off) => off());
      tracker.clear();
      for (const watch of watched.current.values()) if (watch.timer) clearTimeout(watch.timer);
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
  const readState = useCallback(
    async (threadId: string, opts?: { messages?: number }) => {
      if (!client) throw new Error("useChat: not started yet");
      const watch = watched.current.get(threadId);
      if (watch) watch.messages = opts?.messages;
      else watched.current.set(threadId, { messages: opts?.messages, timer: null });
      const state = await client.readState(threadId, opts);
      setReceipts((all) => ({ ...all, [threadId]: { ...receiptsOf(state), latest: all[threadId]?.latest ?? null } }));
      return state;
    },
    [client],
  );
  const sendTyping = useCallback((threadId: string) => void client?.typing(threadId), [client]);
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
    readState,
    receipts,
    typing,
    sendTyping,
    pause,
    resume,
  };
}
