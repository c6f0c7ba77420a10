interface CryptoLike {
  getRandomValues(array: Uint8Array): Uint8Array;
}

let counter = 0;

function randomPart(): string {
  const crypto = (globalThis as { crypto?: CryptoLike }).crypto;
  if (crypto && typeof crypto.getRandomValues === "function") {
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    let hex = "";
    for (const b of bytes) hex += b.toString(16).padStart(2, "0");
    return hex;
  }
  // No Web Crypto (older React Native): Math.random with a per-process counter.
  counter = (counter + 1) % 1679616;
  return Math.random().toString(36).slice(2, 12).padEnd(10, "0") + counter.toString(36).padStart(4, "0");
}

/** A packet id, `<Unix ms>-<random>`: unique, at most 64 characters as the protocol asks. */
export function newId(now: number = Date.now()): string {
  return `${now}-${randomPart()}`;
}
