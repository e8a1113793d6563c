/**
 * The import rules of DESIGN.md ("Dependencies point one way"), checked by `npm run lint` in CI.
 * Type-only imports count: a cycle through types still ties two modules together.
 */
const ROLES = '^(router|control|cell|cli|protocol|common|native-bindings)/';

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'No import cycles, type-only imports included.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'router-cell-protocol-never-import-control',
      severity: 'error',
      from: { path: '^(router|cell|protocol|common)/' },
      to: { path: '^control/' },
    },
    {
      name: 'protocol-imports-only-common',
      severity: 'error',
      from: { path: '^protocol/' },
      to: { path: '^(router|control|cell|cli|native-bindings)/' },
    },
    {
      name: 'common-imports-nothing-of-ours',
      severity: 'error',
      from: { path: '^common/' },
      to: { path: ROLES, pathNot: '^common/' },
    },
    {
      name: 'only-router-uses-native-bindings',
      severity: 'error',
      from: { path: '^(control|cell|cli|protocol|common)/' },
      to: { path: '^native-bindings/' },
    },
    {
      name: 'roles-do-not-import-each-other',
      severity: 'error',
      comment: 'Only cli/ wires roles together; router, control and cell share protocol/ and common/.',
      from: { path: '^(router|control|cell)/' },
      to: { path: '^(router|control|cell|cli)/', pathNot: '^$1/' },
    },
    {
      name: 'cross-folder-imports-through-index',
      severity: 'error',
      comment:
        "Product code reaches another top-level folder only through that folder's index.ts. cli/ is the " +
        'launcher: it loads each role lazily, and reaching a role through its index would load all of it ' +
        '(uWS, ioredis) for a plain `sf --help`, so it may import the one module it needs.',
      from: { path: '^(router|control|cell|protocol|common|native-bindings)/' },
      to: {
        path: '^(router|control|cell|protocol|common|native-bindings)/',
        pathNot: ['^$1/', '^(router|control|cell|protocol|common|native-bindings)/index\\.ts$'],
      },
    },
    {
      name: 'control-layers-point-down',
      severity: 'error',
      comment: 'Inside control: api -> failover/convergence -> services -> state; never upwards.',
      from: { path: '^control/(state|leader)/' },
      to: { path: '^control/(api|failover|convergence|services|placement|events|sweeper)/' },
    },
    {
      name: 'control-services-below-failover-and-api',
      severity: 'error',
      from: { path: '^control/services/' },
      to: { path: '^control/(api|failover|convergence)/' },
    },
    {
      name: 'control-failover-below-convergence-and-api',
      severity: 'error',
      from: { path: '^control/failover/' },
      to: { path: '^control/(api|convergence)/' },
    },
    {
      name: 'no-orphans-in-product-code',
      severity: 'warn',
      from: { orphan: true, path: ROLES, pathNot: ['\\.d\\.ts$', '^cli/sf\\.ts$'] },
      to: {},
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|native-bindings/build)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
  },
};
