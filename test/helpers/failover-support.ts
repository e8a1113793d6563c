/**
 * Shared pieces of the failover and fencing suites: find an instance's engine pid and the
 * primary in a service view, wait for a promotion, and run the `sf` CLI against a test cluster.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { type ActualInstance, type EngineUser, type InstanceSpec } from '../../protocol/cell-protocol';
import type { ServiceView } from '../../control/services';
import { ADMIN_TOKEN } from './control-harness';
import type { ServiceCluster } from './service-cluster';
import { keyLayout } from '../../protocol/keys';

const KEYS = keyLayout();

const SF = path.resolve(__dirname, '../../cli/sf.js');
const exec = promisify(execFile);

/** The pid of an instance's engine, from its cell's actual state (what the cell supervises). */
export async function enginePid(cluster: ServiceCluster, view: ServiceView, instanceId: string): Promise<number> {
  const inst = view.instances.find((i) => i.id === instanceId)!;
  const text = await cluster.state.hget(KEYS.cell(inst.cell).actual, instanceId);
  const pid = text ? (JSON.parse(text) as ActualInstance).pid : null;
  if (!pid) throw new Error(`no pid for ${instanceId}`);
  return pid;
}

/**
 * The platform's management user of an instance's engine, from its desired spec: for
 * the few checks a service key may not make (another session's wait events in PostgreSQL).
 */
export async function adminUser(cluster: ServiceCluster, view: ServiceView, instanceId: string): Promise<EngineUser> {
  const inst = view.instances.find((i) => i.id === instanceId)!;
  const text = await cluster.state.hget(KEYS.cell(inst.cell).desired, instanceId);
  const admin = text ? (JSON.parse(text) as InstanceSpec).credentials?.admin : undefined;
  if (!admin) throw new Error(`no credentials in the desired spec of ${instanceId}`);
  return admin;
}

export function primaryOf(view: ServiceView): ServiceView['instances'][number] {
  const p = view.instances.find((i) => i.role === 'primary');
  if (!p) throw new Error(`service ${view.name} has no primary`);
  return p;
}

/** A fully running service whose primary is no longer `old` and whose epoch passed `epoch`. */
export function promotedFrom(old: string, epoch: number) {
  return (v: ServiceView): boolean =>
    v.status === 'running' &&
    v.epoch > epoch &&
    primaryOf(v).id !== old &&
    v.instances.every((i) => i.state === 'running');
}

export async function sf(
  cluster: ServiceCluster,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env, SF_CONTROL_URL: cluster.controls[0].control.url, SF_API_TOKEN: ADMIN_TOKEN };
  try {
    const { stdout, stderr } = await exec(process.execPath, [SF, ...args], { env });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
