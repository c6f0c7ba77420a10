/**
 * The delay before retry number `attempt` (1, 2, 3, ...): exponential backoff
 * with full jitter, bounded by `minDelayMs` and `maxDelayMs`. The ceiling
 * doubles with each attempt, `min(maxDelayMs, minDelayMs * 2^attempt)`, and
 * the delay is drawn uniformly between `minDelayMs` and that ceiling, so
 * clients that lost their connection at the same moment do not come back at
 * the same moment.
 */
export function backoffDelay(attempt: number, minDelayMs: number, maxDelayMs: number, random: () => number): number {
  const n = Math.max(1, Math.floor(attempt));
  const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** n);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(minDelayMs + r * Math.max(0, ceiling - minDelayMs));
}
