/** Remembers the most recent `capacity` ids (insertion order); older ones are forgotten. */
export class BoundedIdSet {
  private readonly ids = new Map<string, true>();

  constructor(readonly capacity = 10_000) {
    if (!(capacity >= 1)) throw new RangeError("capacity must be at least 1");
  }

  get size(): number {
    return this.ids.size;
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  /** Adds `id`; returns false when it was already there (a duplicate). */
  add(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.set(id, true);
    while (this.ids.size > this.capacity) {
      const oldest = this.ids.keys().next().value as string;
      this.ids.delete(oldest);
    }
    return true;
  }

  clear(): void {
    this.ids.clear();
  }
}
