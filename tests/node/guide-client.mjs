// The guide's own JavaScript ChatClient (realtime-messaging-guide.md, "JavaScript/Web Client"),
// unchanged but for the WebSocket implementation: Node 20 has no global WebSocket, so the `ws`
// package provides it. Usage: node guide-client.mjs <serverUrl> <token> <threadId>
// Prints one JSON line per event to stdout: {"event":"ready"|"message"|"error", ...}.
import WebSocket from "ws";
globalThis.WebSocket = WebSocket;

class ChatClient {
  constructor(token, serverUrl) {
    this.token = token;
    this.serverUrl = serverUrl;
    this.ws = null;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = 5;
  }

  connect() {
    const wsUrl = `${this.serverUrl.replace("http", "ws")}?token=${this.token}`;
    this.ws = new WebSocket(wsUrl);

    this.ws.onopen = () => {
      console.error("WebSocket connected");
      this.reconnectAttempts = 0;
    };

    this.ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.handleMessage(message);
    };

    this.ws.onclose = () => {
      console.error("WebSocket disconnected");
      this.handleReconnect();
    };

    this.ws.onerror = (error) => {
      console.error("WebSocket error:", error.message);
    };
  }

  handleMessage(message) {
    switch (message.type) {
      case "new_message":
        this.onNewMessage(message.data);
        break;
      case "connection_established":
        console.error("Connection established for user:", message.user_id);
        if (this.onConnected) this.onConnected(message);
        break;
      case "error":
        console.error("Server error:", message.message);
        break;
      default:
        console.error("Unknown message type:", message.type);
        if (this.onOther) this.onOther(message);
    }
  }

  onNewMessage(message) {
    if (this.onMessageCallback) {
      this.onMessageCallback(message);
    }
  }

  subscribeToThread(threadId) {
    this.send({ type: "subscribe_thread", thread_id: threadId });
  }

  unsubscribeFromThread(threadId) {
    this.send({ type: "unsubscribe_thread", thread_id: threadId });
  }

  ping() {
    this.send({ type: "ping" });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  handleReconnect() {
    if (this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnectAttempts++;
      setTimeout(() => this.connect(), 1000 * this.reconnectAttempts);
    }
  }

  disconnect() {
    this.maxReconnectAttempts = 0;
    if (this.ws) {
      this.ws.close();
    }
  }
}

const [serverUrl, token, threadId] = process.argv.slice(2);
if (!serverUrl || !token || !threadId) {
  console.error("usage: node guide-client.mjs <serverUrl> <token> <threadId>");
  process.exit(2);
}
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const chatClient = new ChatClient(token, serverUrl);
const timer = setTimeout(() => { out({ event: "timeout" }); process.exit(1); }, 30000);
chatClient.onConnected = (m) => {
  chatClient.subscribeToThread(threadId);
};
chatClient.onOther = (m) => {
  if (m.type === "thread_subscribed") out({ event: "ready", thread_id: m.thread_id });
};
chatClient.onMessageCallback = (message) => {
  out({ event: "message", data: message });
  clearTimeout(timer);
  chatClient.disconnect();
  setTimeout(() => process.exit(0), 50);
};
chatClient.connect();
