/**
 * A Redis URL fit to show a client (`GET /v3/info`): scheme, hosts, database or master name, and
 * nothing that authenticates. `/v3/info` once handed the state store's password to
 * any read token.
 */

/** Query parameters that select rather than authenticate; every other one is dropped. */
const KEPT_QUERY_PARAMS = new Set(['db', 'family']);

/**
 * `url` without its user-info (`user:password@`) and without query parameters other than `db` and
 * `family` (ioredis reads options such as `password` from the query string too).
 */
export function publicRedisUrl(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)([^?#]*)(\?[^#]*)?/i.exec(url);
  if (!m) return '';
  const [, scheme, authority, path, query] = m;
  const at = authority.lastIndexOf('@');
  const hosts = at >= 0 ? authority.slice(at + 1) : authority;
  let kept = '';
  if (query) {
    const params = new URLSearchParams(query.slice(1));
    const out = new URLSearchParams();
    for (const [k, v] of params) if (KEPT_QUERY_PARAMS.has(k)) out.append(k, v);
    kept = out.size ? `?${out.toString()}` : '';
  }
  return `${scheme}${hosts}${path}${kept}`;
}
