import { expect } from 'chai';
import { ErrorCode, SfError, errorBody, httpStatusFor } from '../../../common/errors';

describe('control errors', function () {
  describe('httpStatusFor', function () {
    it('maps codes to 4xx and anything unknown to 500', function () {
      expect(httpStatusFor(new SfError(ErrorCode.InvalidJson, 'x'))).to.equal(400);
      expect(httpStatusFor(new SfError(ErrorCode.StaleModificationTag, 'x'))).to.equal(409);
      expect(httpStatusFor(new SfError(ErrorCode.PortNotReservable, 'x'))).to.equal(422);
      expect(httpStatusFor(new Error('boom'))).to.equal(500);
    });
  });

  describe('errorBody', function () {
    it('keeps code, message and field, and hides internal errors', function () {
      expect(errorBody(new SfError(ErrorCode.InvalidRequest, 'port bad', 'port'))).to.deep.equal({
        error: { code: 'SF_ERR_INVALID_REQUEST', message: 'port bad', field: 'port' },
      });
      expect(errorBody(new Error('secret detail')).error.message).to.equal('internal error');
    });
  });
});
