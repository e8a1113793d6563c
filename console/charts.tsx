/**
 * Per-route connections and bytes over time, from the routers' counters (`/v3/route_stats`),
 * drawn with uPlot. The console samples every poll and keeps the last few minutes in memory.
 */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';

/** One series per route port: timestamps (s) and values. */
export interface Series {
  label: string;
  times: number[];
  values: number[];
}

export function Chart(props: { title: string; unit: string; series: Series }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    if (!el.current) return;
    plot.current = new uPlot(
      {
        title: props.title,
        width: 320,
        height: 140,
        series: [{}, { label: props.unit, stroke: '#2563eb', width: 1.5, fill: 'rgba(37,99,235,0.08)' }],
        axes: [{}, { size: 60 }],
        legend: { show: false },
        cursor: { show: false },
      },
      [props.series.times, props.series.values],
      el.current,
    );
    return () => plot.current?.destroy();
  }, [props.title]);
  useEffect(() => {
    plot.current?.setData([props.series.times, props.series.values]);
  }, [props.series.times.length, props.series.times[props.series.times.length - 1]]);
  return <div class="chart" ref={el} data-chart={props.title} />;
}
