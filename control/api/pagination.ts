/**
 * Cloud Foundry v3 pagination for listing endpoints: `page` (from 1) and `per_page` (1-5000)
 * query parameters, and a `pagination` block with `total_results`, `total_pages` and `first`,
 * `last`, `next`, `previous` links. Without `per_page` a list answers every entry on one page,
 * so clients written before pagination keep working; with it they follow `next`.
 */
import { ErrorCode, SfError } from '../../common';

/** @default 5000 entries on one page at most */
export const MAX_PER_PAGE = 5_000;

export interface PageRequest {
  page: number;
  /** null: everything on one page. */
  perPage: number | null;
}

export interface Pagination {
  total_results: number;
  total_pages: number;
  first: { href: string };
  last: { href: string };
  next: { href: string } | null;
  previous: { href: string } | null;
}

function positiveInt(query: URLSearchParams, name: string, max: number): number | null {
  const raw = query.get(name);
  if (raw === null) return null;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < 1 || n > max)
    throw new SfError(ErrorCode.InvalidRequest, `${name} must be an integer 1-${max}`, name);
  return n;
}

/** Validates `page` and `per_page` (400 naming the parameter). */
export function pageRequest(query: URLSearchParams): PageRequest {
  return {
    page: positiveInt(query, 'page', Number.MAX_SAFE_INTEGER) ?? 1,
    perPage: positiveInt(query, 'per_page', MAX_PER_PAGE),
  };
}

/** One page of `items` (already in their listing order) and its links under `path`. */
export function paginate<T>(
  items: readonly T[],
  req: PageRequest,
  path: string,
): { pagination: Pagination; resources: T[] } {
  const perPage = req.perPage ?? Math.max(1, items.length);
  const totalPages = Math.max(1, Math.ceil(items.length / perPage));
  const href = (page: number): { href: string } => ({
    href: req.perPage === null ? path : `${path}?page=${page}&per_page=${perPage}`,
  });
  const start = (req.page - 1) * perPage;
  return {
    pagination: {
      total_results: items.length,
      total_pages: totalPages,
      first: href(1),
      last: href(totalPages),
      next: req.page < totalPages ? href(req.page + 1) : null,
      previous: req.page > 1 ? href(Math.min(req.page - 1, totalPages)) : null,
    },
    resources: items.slice(start, start + perPage),
  };
}
