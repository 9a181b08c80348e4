/**
 * Where the resume cursor is persisted. Synchronous (localStorage) and asynchronous
 * (React Native AsyncStorage) stores fit the same shape.
 */
export interface StorageAdapter {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem?(key: string): void | Promise<void>;
}

/** In-memory store (the default): survives reconnects and pause/resume, not a restart. */
export function memoryStorage(): StorageAdapter {
  const map = new Map<string, string>();
  return {
    getItem: (key) => map.get(key) ?? null,
    setItem: (key, value) => void map.set(key, value),
    removeItem: (key) => void map.delete(key),
  };
}

interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The browser's `localStorage` (or any Web Storage object passed in). */
export function localStorageAdapter(storage?: WebStorageLike): StorageAdapter {
  const store = storage ?? (globalThis as { localStorage?: WebStorageLike }).localStorage;
  if (!store) throw new Error("localStorage is not available here; pass a storage object");
  return {
    getItem: (key) => store.getItem(key),
    setItem: (key, value) => store.setItem(key, value),
    removeItem: (key) => store.removeItem(key),
  };
}

interface AsyncStorageLike {
  getItem(key: string): Promise<string | null>;
  setItem(key: string, value: string): Promise<void>;
  removeItem(key: string): Promise<void>;
}

/** React Native's AsyncStorage (`@react-native-async-storage/async-storage`), or anything shaped like it. */
export function asyncStorageAdapter(storage: AsyncStorageLike): StorageAdapter {
  return {
    getItem: (key) => storage.getItem(key),
    setItem: (key, value) => storage.setItem(key, value),
    removeItem: (key) => storage.removeItem(key),
  };
}
