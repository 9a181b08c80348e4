export { ChatClient, ChatRestError, type ChatClientOptions } from "./client.js";
export { backoffCeiling, backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { compareCursors, newerCursor, parseCursor } from "./cursor.js";
export { BoundedIdSet } from "./dedup.js";
export { jwtExpiryMs, jwtPayload, jwtSubject } from "./jwt.js";
export { mergeReceipt, readersOf, receiptsOf, TYPING_EXPIRY_MS, TypingTracker, type ThreadReceipts } from "./livestate.js";
export { TYPING_INTERVAL_MS, TYPING_LIMIT_MS, TypingThrottle } from "./signals.js";
export { asyncStorageAdapter, localStorageAdapter, memoryStorage, type StorageAdapter } from "./storage.js";
export type * from "./types.js";
