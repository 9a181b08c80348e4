/**
 * Resume cursors are opaque strings to clients; the gateway makes them RFC 3339 timestamps
 * (possibly with microseconds and an offset). To keep "the newest one", they are compared as
 * times, with full sub-millisecond precision.
 */

const RFC3339 = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$/;

/** [epoch milliseconds, nanoseconds within the millisecond], or null when not a timestamp. */
export function parseCursor(cursor: string | null | undefined): [number, number] | null {
  if (typeof cursor !== "string") return null;
  const m = RFC3339.exec(cursor.trim());
  if (!m) return null;
  const [, date, time, fraction = "", zone = "Z"] = m;
  let offset = zone.toUpperCase() === "Z" ? "Z" : zone;
  if (offset !== "Z" && !offset.includes(":")) offset = `${offset.slice(0, 3)}:${offset.slice(3)}`;
  const ms = fraction.padEnd(3, "0").slice(0, 3);
  const epoch = Date.parse(`${date}T${time}.${ms}${offset}`);
  if (Number.isNaN(epoch)) return null;
  const sub = Number(fraction.slice(3).padEnd(6, "0").slice(0, 6));
  return [epoch, sub];
}

/** Negative when a is older than b, positive when newer, 0 when equal. Unparseable sorts oldest. */
export function compareCursors(a: string | null | undefined, b: string | null | undefined): number {
  const pa = parseCursor(a);
  const pb = parseCursor(b);
  if (!pa || !pb) return (pa ? 1 : 0) - (pb ? 1 : 0);
  return pa[0] !== pb[0] ? pa[0] - pb[0] : pa[1] - pb[1];
}

/** The newer of two cursors (a valid one beats an invalid or missing one; ties keep `current`). */
export function newerCursor(current: string | null | undefined, candidate: string | null | undefined): string | null {
  const valid = (c: string | null | undefined): c is string => parseCursor(c) !== null;
  if (!valid(candidate)) return valid(current) ? current : null;
  if (!valid(current)) return candidate;
  return compareCursors(candidate, current) > 0 ? candidate : current;
}
