// The JavaScript SDK's reconnect delay (clients/js/src/backoff.ts), the same
// formula written again here so that the load generator reconnects as the
// SDK does without importing it: exponential backoff with full jitter.  The
// ceiling doubles with each attempt, min(maxMs, minMs * 2^attempt), and the
// delay is drawn uniformly between minMs and that ceiling.
'use strict';

// The SDK's defaults (ImdClient options reconnect.minDelayMs / maxDelayMs).
const SDK_MIN_DELAY_MS = 500;
const SDK_MAX_DELAY_MS = 30000;

function backoffDelay(attempt, minDelayMs, maxDelayMs, random) {
  const n = Math.max(1, Math.floor(attempt));
  const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** n);
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(minDelayMs + r * Math.max(0, ceiling - minDelayMs));
}

module.exports = { backoffDelay, SDK_MIN_DELAY_MS, SDK_MAX_DELAY_MS };
