// App startup flow
async function initializeChat() {
  // 1. Get unread count
  const unreadResponse = await fetch("/api/chat/unread-count", {
    headers: { Authorization: `Bearer ${token}` },
  });
  const { unread_count } = await unreadResponse.json();

  // Show badge with unread count
  updateBadge(unread_count);

  // 2. Get offline messages
  const lastCheckTime =
    localStorage.getItem("lastMessageCheck") || "2024-01-01T00:00:00Z";
  const offlineResponse = await fetch(
    `/api/chat/offline-messages?last_check_time=${lastCheckTime}`,
    {
      headers: { Authorization: `Bearer ${token}` },
    }
  );
  const { messages, last_check_time } = await offlineResponse.json();

  // Process offline messages
  messages.forEach((message) => {
    displayMessage(message);
  });

  // Update last check time
  localStorage.setItem("lastMessageCheck", last_check_time);

  // 3. Connect WebSocket for real-time
  chatClient.connect();
}
