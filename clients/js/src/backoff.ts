/** Reconnect delays: exponential growth with "full jitter" (a uniform draw in [0, ceiling)). */
export interface BackoffOptions {
  /** Ceiling of the first retry's delay, in ms (default 500). */
  baseMs?: number;
  /** Largest delay ever used, in ms (default 30 000). */
  capMs?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { baseMs: 500, capMs: 30_000 };

/**
 * The ceiling for retry number `attempt` (0-based): min(cap, base * 2^attempt).
 * Never overflows, whatever `attempt`.
 */
export function backoffCeiling(attempt: number, options: BackoffOptions = {}): number {
  const base = Math.max(0, options.baseMs ?? DEFAULT_BACKOFF.baseMs);
  const cap = Math.max(0, options.capMs ?? DEFAULT_BACKOFF.capMs);
  const exponent = Math.min(Math.max(0, Math.floor(attempt)), 40);
  return Math.min(cap, base * 2 ** exponent);
}

/** A full-jitter delay for retry number `attempt`: uniform in [0, backoffCeiling(attempt)). */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(attempt, options));
}
