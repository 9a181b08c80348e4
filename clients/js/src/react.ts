import { useCallback, useEffect, useRef, useState } from "react";
import { ChatClient, type ChatClientOptions } from "./client.js";
import type { ChatError, ChatMessage, ConnectionStatus } from "./types.js";

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
  markRead: (threadId: string) => Promise<void>;
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

  useEffect(() => {
    const { threads: _threads, keep: _keep, onMessage: _onMessage, ...clientOptions } = latest.current;
    const c = new ChatClient({
      ...clientOptions,
      getToken: clientOptions.getToken ? (reason) => latest.current.getToken!(reason) : undefined,
    });
    const offs = [
      c.on("status", setStatus),
      c.on("unreadCount", setUnread),
      c.on("error", setLastError),
      c.on("message", ({ message }) => {
        latest.current.onMessage?.(message);
        const keep = latest.current.keep ?? 200;
        if (keep > 0) setMessages((list) => [...list, message].slice(-keep));
      }),
    ];
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
  const pause = useCallback(() => client?.pause(), [client]);
  const resume = useCallback(() => client?.resume(), [client]);

  return { client, status, unreadCount, messages, lastError, markRead, pause, resume };
}
