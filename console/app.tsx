/**
 * The Service Foundry console: services, cells, routers and routes, fencing history, a live
 * event feed and per-route charts, with fence / unfence / failover, snapshot and move behind the
 * write scope, each after a confirmation that says what it will do.
 * Everything is read from the control API with the token given at sign-in.
 */
import { render } from 'preact';
import { useEffect, useState, useCallback } from 'preact/hooks';
import {
  ApiError,
  api,
  followEvents,
  storeToken,
  storedToken,
  type Cell,
  type FencingStep,
  type RouteRecord,
  type RouteStats,
  type RouterGroup,
  type RouterHeartbeat,
  type Service,
} from './api';
import { Chart, type Series } from './charts';

/** How often the console re-reads the API; the event feed is pushed. */
const POLL_MS = 2_000;
/** Chart window: 5 minutes of samples. */
const MAX_SAMPLES = 150;
const MAX_EVENTS = 200;

interface Snapshot {
  services: Service[];
  cells: Cell[];
  groups: Array<RouterGroup & { routers: RouterHeartbeat[]; tableVersion: number }>;
  routes: RouteRecord[];
  stats: RouteStats | null;
}

function SignIn(props: { onToken: (t: string) => void; error: string | null }) {
  const [value, setValue] = useState('');
  return (
    <form
      class="signin"
      onSubmit={(e) => {
        e.preventDefault();
        if (value.trim()) props.onToken(value.trim());
      }}
    >
      <h1>Service Foundry</h1>
      <p>Sign in with an API token (kept in this tab only).</p>
      <input
        id="token"
        type="password"
        autocomplete="off"
        placeholder="API token"
        value={value}
        onInput={(e) => setValue((e.target as HTMLInputElement).value)}
      />
      <button id="signin" type="submit">
        Sign in
      </button>
      {props.error && <p class="error">{props.error}</p>}
    </form>
  );
}

function Health(props: { healthy: boolean | null }) {
  return <span class={`dot ${props.healthy === true ? 'ok' : props.healthy === false ? 'bad' : 'unknown'}`} />;
}

function ServiceRow(props: { s: Service; selected: boolean; onSelect: () => void }) {
  const { s } = props;
  return (
    <tr class={props.selected ? 'selected' : ''} data-service={s.name} onClick={props.onSelect}>
      <td>{s.name}</td>
      <td>
        <span class={`status ${s.status}`} data-status={s.status}>
          {s.status}
        </span>
        {s.message && <div class="reason">{s.message}</div>}
      </td>
      <td>{s.engine}</td>
      <td>{s.port}</td>
      <td>{s.durability}</td>
      <td>
        {s.instances.map((i) => (
          <div class="instance" key={i.id}>
            <Health healthy={i.healthy} /> {i.id} <b>{i.role}</b> on {i.cell} · epoch {i.epoch} · {i.state}
          </div>
        ))}
      </td>
    </tr>
  );
}

const ACTIONS = {
  fence: (s: Service) => {
    const p = s.instances.find((i) => i.role === 'primary');
    return `Fence ${s.name}: its primary ${p?.id ?? '(none)'} is cut off in every router at once and killed, its epoch ${s.epoch} is retired, and ${s.fencing.policy === 'auto' ? 'the most up-to-date replica is promoted' : 'nothing is promoted until you fail over (manual policy)'}. Clients' open connections are closed.`;
  },
  unfence: (s: Service) =>
    `Unfence ${s.name}: lift the fence of its fenced instance so it can rejoin as a replica (never as primary with an old epoch).`,
  failover: (s: Service) => {
    const p = s.instances.find((i) => i.role === 'primary');
    return `Fail over ${s.name}: a planned switchover from ${p?.id ?? '(none)'}: writes pause while the most up-to-date replica catches up, then it is promoted with epoch ${s.epoch + 1} and the old primary rejoins as its replica. Open connections are closed.`;
  },
} as const;

function ServiceDetail(props: { token: string; s: Service; onDone: () => void }) {
  const { s, token } = props;
  const [history, setHistory] = useState<FencingStep[]>([]);
  const [busy, setBusy] = useState<string | null>(null);
  const [result, setResult] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    const load = () =>
      api<{ resources: FencingStep[] }>(token, 'GET', `/v3/service_instances/${encodeURIComponent(s.name)}/fencing`)
        .then((r) => live && setHistory(r.resources))
        .catch(() => undefined);
    void load();
    const t = setInterval(load, POLL_MS);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, [s.name, token]);
  const act = async (what: keyof typeof ACTIONS) => {
    if (!window.confirm(ACTIONS[what](s))) return;
    setBusy(what);
    setResult(null);
    try {
      await api(token, 'POST', `/v3/service_instances/${encodeURIComponent(s.name)}/actions/${what}`, {});
      setResult(`${what} done`);
    } catch (err) {
      // A read token gets 403: the actions need the write scope.
      setResult(err instanceof ApiError ? `${what} refused: ${err.message}` : String(err));
    } finally {
      setBusy(null);
      props.onDone();
    }
  };
  /** Volume actions: a snapshot of the primary, or a move of the primary to a cell the operator names. */
  const snapshot = async () => {
    const p = s.instances.find((i) => i.role === 'primary');
    const text = `Snapshot ${s.name}: a consistent copy of its primary ${p?.id ?? '(none)'} (${s.engine === 'redis' ? 'BGSAVE' : 'pg_basebackup'}) is taken on ${p?.cell ?? '?'} while it serves and copied to a second cell; only the newest 7 snapshots of the service are kept. Clients are not interrupted.`;
    if (!window.confirm(text)) return;
    await run('snapshot', async () => {
      const r = await api<{ id: string; cells: string[] }>(
        token,
        'POST',
        `/v3/service_instances/${encodeURIComponent(s.name)}/actions/snapshot`,
        {},
      );
      return `snapshot ${r.id} on ${r.cells.join(', ')}`;
    });
  };
  const move = async () => {
    const p = s.instances.find((i) => i.role === 'primary');
    const to = window.prompt(
      `Move the primary ${p?.id ?? '(none)'} of ${s.name} from ${p?.cell ?? '?'} to which cell?`,
    );
    if (!to) return;
    const text = `Move ${p?.id ?? '(none)'} from ${p?.cell ?? '?'} to ${to}: its volume is copied while it serves, then it is stopped, the rest is copied and verified, and it starts on ${to} with epoch ${s.epoch + 1} behind the same port ${s.port}. Writes fail for that switch (a few seconds for a large volume), open connections are closed; the volume on ${p?.cell ?? '?'} is deleted once ${to} serves.`;
    if (!window.confirm(text)) return;
    await run('move', async () => {
      const r = await api<{ id: string }>(
        token,
        'POST',
        `/v3/service_instances/${encodeURIComponent(s.name)}/actions/move`,
        {
          to,
        },
      );
      return `move ${r.id} started (sf moves ${s.name})`;
    });
  };
  const run = async (what: string, fn: () => Promise<string>) => {
    setBusy(what);
    setResult(null);
    try {
      setResult(await fn());
    } catch (err) {
      setResult(err instanceof ApiError ? `${what} refused: ${err.message}` : String(err));
    } finally {
      setBusy(null);
      props.onDone();
    }
  };
  const t0 = history.length ? Date.parse(history[history.length - 1]!.at) : 0;
  return (
    <section class="detail" data-detail={s.name}>
      <h2>
        {s.name} <small>epoch {s.epoch}</small>
      </h2>
      <div class="actions">
        {(['fence', 'unfence', 'failover'] as const).map((a) => (
          <button key={a} data-action={a} disabled={busy !== null} onClick={() => void act(a)}>
            {busy === a ? `${a}…` : a}
          </button>
        ))}
        {s.engine !== 'tcp' && (
          <button data-action="snapshot" disabled={busy !== null} onClick={() => void snapshot()}>
            {busy === 'snapshot' ? 'snapshot…' : 'snapshot'}
          </button>
        )}
        <button data-action="move" disabled={busy !== null} onClick={() => void move()}>
          {busy === 'move' ? 'move…' : 'move'}
        </button>
        {result && <span class="result">{result}</span>}
      </div>
      <h3>Fencing history</h3>
      {history.length === 0 ? (
        <p class="muted">no fencing yet</p>
      ) : (
        <ol class="timeline">
          {[...history].reverse().map((h, n) => (
            <li key={n} class={`step ${h.outcome}`}>
              <span class="t">+{((Date.parse(h.at) - t0) / 1000).toFixed(2)} s</span>
              <b>{h.step}</b> <span class={`outcome ${h.outcome}`}>{h.outcome}</span> {h.instance_id ?? ''} epoch{' '}
              {h.epoch}
              {h.duration_ms !== null && <span class="muted"> ({h.duration_ms} ms)</span>}
              <div class="msg">
                {h.trigger}: {h.message}
              </div>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function Cells(props: { cells: Cell[] }) {
  return (
    <table>
      <thead>
        <tr>
          <th>cell</th>
          <th>zone</th>
          <th>alive</th>
          <th>capacity</th>
          <th>instances</th>
        </tr>
      </thead>
      <tbody>
        {props.cells.map((c) => (
          <tr key={c.name}>
            <td>{c.name}</td>
            <td>{c.zone}</td>
            <td>
              <Health healthy={c.alive} />
            </td>
            <td>
              {c.used_mb ?? '-'} / {c.capacity_mb ?? '-'} MB
            </td>
            <td>{c.instances.map((i) => `${i.id} (${i.role}, ${i.state})`).join(', ')}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Routers(props: { snap: Snapshot; charts: Map<number, { conns: Series; bytes: Series }> }) {
  const { groups, routes, stats } = props.snap;
  return (
    <div>
      {groups.map((g) => (
        <div key={g.guid} class="group">
          <h3>
            group {g.name}{' '}
            <small>
              table version {g.tableVersion} · ports {g.reservable_ports}
            </small>
          </h3>
          <ul>
            {g.routers.map((r) => (
              <li key={r.routerId}>
                router {r.routerId}: applied version {r.version}{' '}
                {r.version === g.tableVersion ? '(current)' : `(behind by ${g.tableVersion - r.version})`}
                {!r.connected && ' · disconnected'}
              </li>
            ))}
          </ul>
          <table>
            <thead>
              <tr>
                <th>port</th>
                <th>backend</th>
                <th>role</th>
                <th>epoch</th>
                <th>state</th>
              </tr>
            </thead>
            <tbody>
              {routes
                .filter((r) => r.router_group_guid === g.guid)
                .map((r) => (
                  <tr key={`${r.port}|${r.backend_id}`}>
                    <td>{r.port}</td>
                    <td>
                      {r.backend_id} ({r.backend_ip}:{r.backend_port})
                    </td>
                    <td>{r.role}</td>
                    <td>{r.epoch}</td>
                    <td class={r.state}>{r.state}</td>
                  </tr>
                ))}
            </tbody>
          </table>
        </div>
      ))}
      {stats?.routers.map((r) => (
        <p key={r.url} class="muted">
          {r.url}: {r.ok ? `table version ${r.table_version}` : `unreachable (${r.error})`}
        </p>
      ))}
      <div class="charts">
        {[...props.charts.entries()].map(([port, c]) => (
          <div key={port} class="chart-pair">
            <Chart title={`port ${port} connections/s`} unit="conn/s" series={c.conns} />
            <Chart title={`port ${port} bytes/s`} unit="B/s" series={c.bytes} />
          </div>
        ))}
      </div>
    </div>
  );
}

function EventFeed(props: { events: string[] }) {
  return (
    <ol class="events" id="events">
      {props.events.map((e, n) => (
        <li key={n}>{e}</li>
      ))}
    </ol>
  );
}

/** Rates from counters: (value now - value before) / seconds between samples. */
function useCharts() {
  const [charts] = useState(
    () => new Map<number, { conns: Series; bytes: Series; last?: { t: number; c: number; b: number } }>(),
  );
  const add = useCallback(
    (stats: RouteStats) => {
      const t = Date.parse(stats.at) / 1000;
      const sums = new Map<number, { c: number; b: number }>();
      for (const r of stats.routers)
        for (const s of r.routes) {
          const cur = sums.get(s.port) ?? { c: 0, b: 0 };
          sums.set(s.port, { c: cur.c + s.connections_total, b: cur.b + s.bytes_in_total + s.bytes_out_total });
        }
      for (const [port, v] of sums) {
        let entry = charts.get(port);
        if (!entry) {
          entry = { conns: { label: 'conn/s', times: [], values: [] }, bytes: { label: 'B/s', times: [], values: [] } };
          charts.set(port, entry);
        }
        if (entry.last && t > entry.last.t) {
          const dt = t - entry.last.t;
          const push = (s: Series, value: number) => {
            s.times = [...s.times, t].slice(-MAX_SAMPLES);
            s.values = [...s.values, Math.max(0, value)].slice(-MAX_SAMPLES);
          };
          push(entry.conns, (v.c - entry.last.c) / dt);
          push(entry.bytes, (v.b - entry.last.b) / dt);
        }
        entry.last = { t, ...v };
      }
    },
    [charts],
  );
  return { charts, add };
}

function Console(props: { token: string; signOut: () => void }) {
  const { token } = props;
  const [snap, setSnap] = useState<Snapshot | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [events, setEvents] = useState<string[]>([]);
  const [tab, setTab] = useState<'services' | 'cells' | 'routing'>('services');
  const { charts, add } = useCharts();

  const load = useCallback(async () => {
    try {
      const [services, cells, groupList, routes, stats] = await Promise.all([
        api<{ resources: Service[] }>(token, 'GET', '/v3/service_instances'),
        api<{ resources: Cell[] }>(token, 'GET', '/v3/cells'),
        api<RouterGroup[]>(token, 'GET', '/routing/v1/router_groups'),
        api<RouteRecord[]>(token, 'GET', '/routing/v1/tcp_routes'),
        api<RouteStats>(token, 'GET', '/v3/route_stats').catch(() => null),
      ]);
      const groups = await Promise.all(
        groupList.map(async (g) => {
          const [routers, table] = await Promise.all([
            api<RouterHeartbeat[]>(token, 'GET', `/routing/v1/router_groups/${g.guid}/routers`),
            api<{ version: number }>(token, 'GET', `/routing/v1/router_groups/${g.guid}/table`),
          ]);
          return { ...g, routers, tableVersion: table.version };
        }),
      );
      if (stats) add(stats);
      setSnap({ services: services.resources, cells: cells.resources, groups, routes, stats });
      setError(null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) props.signOut();
      setError((err as Error).message);
    }
  }, [token]);

  useEffect(() => {
    void load();
    const t = setInterval(() => void load(), POLL_MS);
    return () => clearInterval(t);
  }, [load]);

  useEffect(() => {
    const abort = new AbortController();
    const follow = (): void => {
      followEvents(
        token,
        (type, data) => {
          let line = `${new Date().toLocaleTimeString()} ${type}`;
          try {
            const r = JSON.parse(data) as RouteRecord;
            line += ` port ${r.port} → ${r.backend_id} ${r.role} epoch ${r.epoch} ${r.state}`;
          } catch {
            line += ` ${data}`;
          }
          setEvents((prev) => [line, ...prev].slice(0, MAX_EVENTS));
          void load();
        },
        abort.signal,
      )
        .catch(() => undefined)
        // The stream ends when control restarts or drops a slow reader: follow again.
        .finally(() => {
          if (!abort.signal.aborted) setTimeout(follow, 1_000);
        });
    };
    follow();
    return () => abort.abort();
  }, [token]);

  const current = snap?.services.find((s) => s.name === selected);
  return (
    <div class="console">
      <header>
        <h1>Service Foundry</h1>
        <nav>
          {(['services', 'cells', 'routing'] as const).map((t) => (
            <button key={t} class={tab === t ? 'active' : ''} data-tab={t} onClick={() => setTab(t)}>
              {t}
            </button>
          ))}
        </nav>
        <button class="signout" onClick={props.signOut}>
          Sign out
        </button>
      </header>
      {error && <p class="error">{error}</p>}
      <main>
        <div class="left">
          {tab === 'services' && (
            <table id="services">
              <thead>
                <tr>
                  <th>service</th>
                  <th>status</th>
                  <th>engine</th>
                  <th>port</th>
                  <th>durability</th>
                  <th>instances (role, cell, epoch, state)</th>
                </tr>
              </thead>
              <tbody>
                {snap?.services.map((s) => (
                  <ServiceRow key={s.name} s={s} selected={s.name === selected} onSelect={() => setSelected(s.name)} />
                ))}
              </tbody>
            </table>
          )}
          {tab === 'services' && snap?.services.length === 0 && <p class="muted">no services yet</p>}
          {tab === 'cells' && snap && <Cells cells={snap.cells} />}
          {tab === 'routing' && snap && <Routers snap={snap} charts={charts} />}
          {tab === 'services' && current && <ServiceDetail token={token} s={current} onDone={() => void load()} />}
        </div>
        <aside>
          <h3>Live route events</h3>
          <EventFeed events={events} />
        </aside>
      </main>
    </div>
  );
}

function App() {
  const [token, setToken] = useState<string | null>(storedToken());
  const [error, setError] = useState<string | null>(null);
  const signIn = async (t: string) => {
    try {
      await api(t, 'GET', '/v3/service_instances');
      storeToken(t);
      setError(null);
      setToken(t);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? 'unknown token' : (err as Error).message);
    }
  };
  if (!token) return <SignIn onToken={(t) => void signIn(t)} error={error} />;
  return (
    <Console
      token={token}
      signOut={() => {
        storeToken(null);
        setToken(null);
      }}
    />
  );
}

render(<App />, document.getElementById('app')!);
