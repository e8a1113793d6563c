/**
 * Chooses the byte mover: the native splice relay when its addon is built and loadable, the
 * pure-JS relay otherwise. `SF_RELAY=js|native` overrides the `auto` choice.
 */
import { ErrorCode, SfError } from '../common';
import type { Relay } from './relay';
import { createJsRelay } from './relay-js';

export type RelayChoice = 'auto' | 'js' | 'native';

function loadNativeRelay(options: NativeRelayThreads): Relay | undefined {
  try {
    // Loaded lazily so that a router without the addon never touches native code.
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a lazy load is the point here
    const mod = require('./relay-native') as {
      createNativeRelay?: (o: NativeRelayThreads) => Relay | undefined;
    };
    return mod.createNativeRelay?.(options);
  } catch {
    return undefined;
  }
}

/** The native relay's thread count (`sf router --threads`); SF_NATIVE_RELAY_THREADS or 1 when unset. */
export interface NativeRelayThreads {
  threads?: number;
}

export function selectRelay(choice: RelayChoice = 'auto', options: NativeRelayThreads = {}): Relay {
  const wanted = choice === 'auto' ? ((process.env.SF_RELAY as RelayChoice | undefined) ?? 'auto') : choice;
  if (wanted === 'js') return createJsRelay();
  const native = loadNativeRelay(options);
  if (native) return native;
  if (wanted === 'native') {
    throw new SfError(
      ErrorCode.InvalidOption,
      'relay native was asked for but the addon is not built (run npm run setup)',
      'relay',
    );
  }
  return createJsRelay();
}
