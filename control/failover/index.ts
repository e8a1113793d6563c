/** Fencing and failover: the coordinator, the fencing sequence and its history. */
export {
  FencingFailoverCoordinator,
  type FencingActionResult,
  type FencingAction,
  type FencingCoordinatorDeps,
} from './fencing-coordinator';
export {
  FencingSequence,
  FencingOperation,
  type FencingDeps,
  type ServiceRecords,
  type StepRecorder,
} from './fencing-sequence';
export {
  cellFencingSteps,
  type FencingSteps,
  type RouteFenceStep,
  type ShootStep,
  type LeaseFloorStep,
  type NetworkFenceStep,
  type PromoteStep,
  type RejoinStep,
  type RejoinResult,
  type CellView,
} from './fencing-steps';
export { LeaderAddressBook, type LeaderAddress, type LeaderAddressOptions } from './leader-address';
export { planAction, eligibleReplicas, type ActionPlan } from './action-validation';
export { FencingHistory, type FencingStep, type FencingStepName, type FencingOutcome } from './fencing-history';
export { DEFAULT_FAILOVER_OPTIONS, type FailoverOptions } from './failover-options';
export { waitForRouters, type RouterAck } from './router-ack';
export { chooseReplica, type Candidate } from './replica-choice';
