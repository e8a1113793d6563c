import type { Balancer, BalancerContext } from './balancer';
import { LeastConnBalancer } from './balancer-least-conn';
import { PrimaryBalancer } from './balancer-primary';
import { RoundRobinBalancer } from './balancer-round-robin';
import type { Route } from '../protocol';

export function createBalancer(route: Route, context: BalancerContext): Balancer {
  switch (route.mode) {
    case 'primary':
      return new PrimaryBalancer(route.backends);
    case 'round-robin':
      return new RoundRobinBalancer(route.backends);
    case 'least-conn':
      return new LeastConnBalancer(route.backends, context);
  }
}
