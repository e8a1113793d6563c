import { expect } from 'chai';
import { formatTable } from '../../../cli/output-table';

describe('formatTable', function () {
  it('aligns columns and shows missing cells as -', function () {
    expect(
      formatTable(
        ['PORT', 'TTL'],
        [
          [16000, null],
          [7, 120],
        ],
      ),
    ).to.equal('PORT   TTL\n16000  -\n7      120\n');
  });
});
