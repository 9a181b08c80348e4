/**
 * The access token: the one in use, asking `getToken` for a new one (one request at a time), and
 * refreshing it ~`refreshMarginMs` before `exp` while a socket is open (the new token is pushed on
 * that socket). Keeps the gateway's clock offset so that `exp` is judged on the gateway's time.
 * Never logs or reports a token.
 */
import { jwtExpiryMs } from "./jwt.js";
import type { TokenReason } from "./types.js";

const MIN_TOKEN_VALIDITY_MS = 5_000;

export type GetToken = (reason: TokenReason) => string | Promise<string>;

/** The open socket a refresh belongs to. */
export interface RefreshTarget {
  /** Still the open, established socket the refresh was scheduled for. */
  open(): boolean;
  /** Sends the new token on it (`access_token`). */
  push(token: string): void;
  /** The refresh failed (getToken threw). */
  failed(message: string): void;
}

export class Tokens {
  token: string | null;
  /** The gateway refused `token` (4001, HTTP 401): the next use asks `getToken` for another. */
  rejected = false;
  /** The gateway's clock minus ours (from `connection_established`). */
  skewMs = 0;
  private request: Promise<string> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly getToken: GetToken | undefined,
    token: string | undefined,
    private readonly refreshMarginMs: number,
  ) {
    this.token = token ?? null;
  }

  /** Whether a new token can be asked for (a `getToken` was given). */
  get renewable(): boolean {
    return this.getToken !== undefined;
  }

  /** Now, on the gateway's clock. */
  now(): number {
    return Date.now() + this.skewMs;
  }

  /** A token handed in by the app. */
  set(token: string): void {
    this.token = token;
    this.rejected = false;
  }

  /** The current token if it is usable, else a new one from `getToken`. */
  async valid(): Promise<string> {
    const exp = jwtExpiryMs(this.token);
    const usable = this.token && !this.rejected && (exp === null || exp - this.now() > MIN_TOKEN_VALIDITY_MS);
    if (usable || !this.getToken) {
      if (!this.token) throw new Error("no token");
      return this.token;
    }
    const reason: TokenReason = !this.token ? "initial" : this.rejected ? "rejected" : "expired";
    return this.fetch(reason);
  }

  /** Asks `getToken` (joins the request already running). */
  fetch(reason: TokenReason): Promise<string> {
    if (!this.request) {
      const getToken = this.getToken as GetToken;
      this.request = Promise.resolve()
        .then(() => getToken(reason))
        .then((token) => {
          if (typeof token !== "string" || !token) throw new Error("getToken returned no token");
          if (token !== this.token) this.rejected = false;
          this.token = token;
          return token;
        })
        .finally(() => {
          this.request = null;
        });
    }
    return this.request;
  }

  /** Refresh ~refreshMarginMs before exp and push the new token on `target`'s socket. */
  scheduleRefresh(target: RefreshTarget, now = false): void {
    this.cancelRefresh();
    const exp = jwtExpiryMs(this.token);
    if (exp === null || !this.getToken) return;
    const left = exp - this.now();
    if (left <= 0) return; // the gateway will close with 4001; we fetch a new one then
    const delay = now ? 0 : Math.max(1_000, left - this.refreshMarginMs);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.fetch("expiring").then(
        (token) => {
          if (!target.open()) return;
          const newExp = jwtExpiryMs(token);
          if (newExp === null || newExp > exp) {
            target.push(token);
            this.scheduleRefresh(target);
          } else {
            this.retryRefresh(target, exp);
          }
        },
        (error) => {
          target.failed(`token refresh failed: ${describe(error)}`);
          this.retryRefresh(target, exp);
        },
      );
    }, delay);
  }

  cancelRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  /** getToken gave nothing newer: ask again later while the current token still lives. */
  private retryRefresh(target: RefreshTarget, exp: number): void {
    const left = exp - this.now();
    if (left <= 0 || !target.open()) return;
    this.cancelRefresh();
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (target.open()) this.scheduleRefresh(target, true);
    }, Math.max(1_000, Math.min(left / 2, 30_000)));
  }
}

export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
