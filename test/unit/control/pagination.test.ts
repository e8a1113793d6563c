import { expect } from 'chai';
import { pageRequest, paginate } from '../../../control/api/pagination';
import { ErrorCode, isSfError } from '../../../common';

describe('pagination', function () {
  describe('paginate', function () {
    const items = Array.from({ length: 25 }, (_, i) => i);

    it('answers everything on one page without per_page, as clients before pagination expect', function () {
      const page = paginate(items, pageRequest(new URLSearchParams('')), '/v3/x');
      expect(page.resources).to.have.length(25);
      expect(page.pagination.total_pages).to.equal(1);
      expect(page.pagination.next).to.equal(null);
    });

    it('links the next page until the last one', function () {
      const first = paginate(items, pageRequest(new URLSearchParams('per_page=10')), '/v3/x');
      expect(first.resources).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(first.pagination.next?.href).to.equal('/v3/x?page=2&per_page=10');
      const last = paginate(items, pageRequest(new URLSearchParams('page=3&per_page=10')), '/v3/x');
      expect(last.resources).to.deep.equal([20, 21, 22, 23, 24]);
      expect(last.pagination.next).to.equal(null);
      expect(last.pagination.previous?.href).to.equal('/v3/x?page=2&per_page=10');
      expect(last.pagination.total_results).to.equal(25);
    });
  });

  describe('pageRequest', function () {
    it('refuses a per_page that is not an integer 1-5000, naming it', function () {
      for (const q of ['per_page=0', 'per_page=5001', 'per_page=x', 'page=-1']) {
        try {
          pageRequest(new URLSearchParams(q));
          expect.fail(`accepted ${q}`);
        } catch (err) {
          expect(isSfError(err) && err.code).to.equal(ErrorCode.InvalidRequest);
          expect(isSfError(err) && err.field).to.equal(q.split('=')[0]);
        }
      }
    });
  });
});
