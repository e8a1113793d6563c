/**
 * Runs a suite once per executor (process, docker), so the failover, fencing and restart cases
 * hold for both without a copy of each test. The docker run uses the daemon of docker-daemon.ts
 * and skips, printing why, where no daemon or images can be had. `SF_TEST_EXECUTORS=process`
 * (or `docker`) limits a run to one.
 */
import { DockerApi } from '../../cell/docker-api';
import { dockerCli } from '../../cell/docker-engine-tools';
import type { ServiceView } from '../../control/services';
import { type ActualInstance } from '../../protocol/cell-protocol';
import { keyLayout } from '../../protocol/keys';
import { releaseDockerDaemon, useDockerDaemon } from './docker-daemon';
import type { ServiceCluster } from './service-cluster';

export type ExecutorKind = 'process' | 'docker';

export interface ExecutorUnderTest {
  kind: ExecutorKind;
  /** Fields of a create-service request that put its instances on this executor. */
  serviceFields: { executor?: 'docker' };
  /** The same as `sf create-service` / `sf up` flags. */
  flags: string[];
  /** Environment of every cell (the daemon's socket on docker). */
  cellEnv: NodeJS.ProcessEnv;
  /**
   * Kills an instance's engine behind its executor's back: SIGKILL of the process, or
   * `docker kill --signal KILL` of its container.
   */
  killEngine(cluster: ServiceCluster, view: ServiceView, instanceId: string): Promise<void>;
  /**
   * What the executor has running for an instance: the engine's pid (process) or its container id
   * (docker); undefined when nothing runs.
   */
  engineOf(cluster: ServiceCluster, view: ServiceView, instanceId: string): Promise<string | undefined>;
  /** Whether `engineOf` is still running. */
  stillRunning(engine: string): Promise<boolean>;
  /**
   * Whether the engine was shot with SIGKILL: on docker the daemon recorded a `kill` of the
   * container with signal 9 since `sinceMs` (the executor's STONITH is a container kill).
   */
  shotWithKill(engine: string, sinceMs: number): Promise<boolean>;
}

const KEYS = keyLayout();

export const EXECUTORS_UNDER_TEST: ExecutorKind[] = (process.env.SF_TEST_EXECUTORS ?? 'process,docker')
  .split(',')
  .map((s) => s.trim())
  .filter((s): s is ExecutorKind => s === 'process' || s === 'docker');

async function actualOf(cluster: ServiceCluster, view: ServiceView, id: string): Promise<ActualInstance | undefined> {
  const inst = view.instances.find((i) => i.id === id);
  if (!inst) throw new Error(`no instance ${id} in ${view.name}`);
  const text = await cluster.state.hget(KEYS.cell(inst.cell).actual, id);
  return text ? (JSON.parse(text) as ActualInstance) : undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const processExecutor: ExecutorUnderTest = {
  kind: 'process',
  serviceFields: {},
  flags: [],
  cellEnv: {},
  async killEngine(cluster, view, id) {
    const pid = (await actualOf(cluster, view, id))?.pid;
    if (!pid) throw new Error(`no pid for ${id}`);
    process.kill(pid, 'SIGKILL');
  },
  async engineOf(cluster, view, id) {
    const pid = (await actualOf(cluster, view, id))?.pid;
    return pid && alive(pid) ? String(pid) : undefined;
  },
  stillRunning: (engine) => Promise.resolve(alive(Number(engine))),
  // The process executor's shot is SIGKILL to the engine's process group: all it can show is that
  // the process is gone.
  shotWithKill: (engine) => Promise.resolve(!alive(Number(engine))),
};

function dockerExecutor(socketPath: string): ExecutorUnderTest {
  const api = new DockerApi({ socketPath });
  async function container(id: string): Promise<string | undefined> {
    const filters = encodeURIComponent(JSON.stringify({ label: [`sf.instance=${id}`], status: ['running'] }));
    const res = await api.call('GET', `/containers/json?filters=${filters}`);
    const list = res.body as Array<{ Id: string }>;
    return list[0]?.Id;
  }
  return {
    kind: 'docker',
    serviceFields: { executor: 'docker' },
    flags: ['--executor', 'docker'],
    cellEnv: { DOCKER_HOST: `unix://${socketPath}` },
    async killEngine(_cluster, _view, id) {
      const c = await container(id);
      if (!c) throw new Error(`no running container of ${id}`);
      await dockerCli(socketPath, ['kill', '--signal', 'KILL', c]);
    },
    engineOf: (_cluster, _view, id) => container(id),
    async stillRunning(engine) {
      const res = await api.call('GET', `/containers/${engine}/json`);
      if (res.status === 404) return false;
      return (res.body as { State: { Running: boolean } }).State.Running;
    },
    async shotWithKill(engine, sinceMs) {
      const filters = encodeURIComponent(JSON.stringify({ container: [engine], event: ['kill'] }));
      const since = Math.floor(sinceMs / 1000) - 1;
      const until = Math.ceil(Date.now() / 1000) + 1;
      // JSON lines, one per event; `until` makes the daemon end the stream.
      const res = await api.raw(`/events?since=${since}&until=${until}&filters=${filters}`, 10_000);
      return res.body
        .toString()
        .split('\n')
        .filter(Boolean)
        .some((line) => {
          const e = JSON.parse(line) as { Actor?: { Attributes?: Record<string, string> } };
          return e.Actor?.Attributes?.signal === '9' || e.Actor?.Attributes?.signal === 'KILL';
        });
    },
  };
}

/**
 * `describe(title [KIND executor])` for each executor under test; `body` gets a getter for the
 * executor, valid from the first hook on. Hooks `body` registers run after the daemon is there.
 */
export function describeEachExecutor(
  title: string,
  body: (this: Mocha.Suite, executor: () => ExecutorUnderTest) => void,
): void {
  for (const kind of EXECUTORS_UNDER_TEST)
    describe(`${title} [${kind} executor]`, function () {
      let current: ExecutorUnderTest | undefined;
      let usedDaemon = false;
      before(async function () {
        if (kind === 'process') {
          current = processExecutor;
          return;
        }
        // The first use may build the engine images from Debian's packages: minutes.
        this.timeout(3_600_000);
        usedDaemon = true;
        const daemon = await useDockerDaemon((line) => console.log(`      ${line}`));
        if (typeof daemon === 'string') {
          console.log(`      skipped: ${daemon}`);
          this.skip();
        }
        current = dockerExecutor(daemon.socketPath);
      });
      body.call(this, () => {
        if (!current) throw new Error(`the ${kind} executor is not set up`);
        return current;
      });
      after(async () => {
        if (usedDaemon) await releaseDockerDaemon();
      });
    });
}
