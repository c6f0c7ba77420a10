import type { ErrorPacket } from "./types.js";

/**
 * A refusal. `code` is the server's `E` code (`not_friend`, `forbidden`,
 * `blocked`, `too_long`, `not_found`, `bad_packet`, ...), or one of the
 * client's own: `closed` (close() was called), `unauthorized` (4001 twice),
 * `replaced` (4002), `kicked` (4003), `config` (the options cannot work),
 * `not_connected` (raw() without a logged-in connection, or lost before the reply).
 */
export class ImdError extends Error {
  readonly code: string;
  /** The server's `E` packet, when the server said it. */
  readonly packet?: ErrorPacket;

  constructor(code: string, message: string, packet?: ErrorPacket) {
    super(message);
    this.name = "ImdError";
    this.code = code;
    if (packet !== undefined) this.packet = packet;
  }
}

/** E codes that mean "try again later", not "no". */
export const RETRYABLE_CODES: ReadonlySet<string> = new Set(["unavailable", "rate_limited"]);
