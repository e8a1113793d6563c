/** Placement: the auction (pure) and how cells become its candidates. */
export {
  runPlacementAuction,
  DEFAULT_PLACEMENT_WEIGHTS,
  type CellCandidate,
  type PlacementRequest,
  type PlacementSlot,
  type PlacementWeights,
  type PlacementDecision,
  type PlacementBid,
  type Exclusion,
} from './placement-auction';
export { cellCandidates } from './cell-candidates';
