/**
 * Merges options over their `DEFAULT_*` constant. Fields explicitly set to `undefined` keep the
 * default, so callers can pass optional values straight through.
 */
export function withDefaults<D extends object, O extends object>(defaults: D, options: O): D & O {
  const merged: Record<string, unknown> = { ...(defaults as Record<string, unknown>) };
  for (const [k, v] of Object.entries(options)) if (v !== undefined) merged[k] = v;
  return merged as D & O;
}
