/** Convergence (leader only): the loop, the per-service reconciler, route emission, failover hook. */
export { ConvergenceLoop, DEFAULT_CONVERGENCE_LOOP_OPTIONS, type ConvergenceLoopOptions } from './convergence-loop';
export {
  ServiceReconciler,
  DEFAULT_SERVICE_RECONCILER_OPTIONS,
  type ServiceReconcilerOptions,
} from './service-reconciler';
export { OrphanCollector } from './orphan-collector';
