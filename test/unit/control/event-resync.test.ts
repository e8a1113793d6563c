import { expect } from 'chai';
import { RESYNC_EVENT as CLIENT_RESYNC_EVENT } from '../../../cli/api-client';
import { RESYNC_EVENT, SLOW_CONSUMER_CLOSE_CODE, SLOW_CONSUMER_REASON } from '../../../control/api/http-server';

describe('slow event consumers', function () {
  it('name the resync event the same on both ends of the SSE stream', function () {
    // The CLI keeps its own copy so that `sf events` does not load uWS; this keeps them equal.
    expect(CLIENT_RESYNC_EVENT).to.equal(RESYNC_EVENT);
  });

  it('close WebSockets with a policy-violation code and a reason that fits a close frame', function () {
    expect(SLOW_CONSUMER_CLOSE_CODE).to.equal(1008);
    expect(SLOW_CONSUMER_REASON.startsWith('resync')).to.equal(true);
    // RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
    expect(Buffer.byteLength(SLOW_CONSUMER_REASON)).to.be.at.most(123);
  });
});
