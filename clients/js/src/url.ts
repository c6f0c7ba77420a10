import { ImdError } from "./errors.js";
import type { TokenResult } from "./types.js";

const WS_URL = /^wss?:\/\//i;

/**
 * The URL to open for what `token()` returned: a full `ws(s)://` URL as it
 * is, a bare wstoken appended to `base`, or the `POST /IM/token` body (its
 * `url`, else its `token`).
 */
export function connectionUrl(result: TokenResult, base: string | undefined): string {
  if (result !== null && typeof result === "object") {
    if (typeof result.url === "string" && result.url !== "") return connectionUrl(result.url, base);
    if (typeof result.token === "string" && result.token !== "") return connectionUrl(result.token, base);
    throw new ImdError("config", "token() returned an object with neither url nor token");
  }
  if (typeof result !== "string" || result === "") {
    throw new ImdError("config", "token() must return a wstoken, a ws(s):// URL or {url, token}");
  }
  if (WS_URL.test(result)) return result;
  if (base === undefined || base === "") {
    throw new ImdError("config", "token() returned a bare wstoken: pass the server's ws(s):// URL as the url option");
  }
  if (!WS_URL.test(base)) throw new ImdError("config", `the url option must start with ws:// or wss://, got ${base}`);
  return `${base.replace(/\/+$/, "")}/${encodeURIComponent(result)}`;
}
