import { expect } from 'chai';
import { hasScope } from '../../../control/api/auth';
import { TokenAuthenticator } from '../../../control/api/token-authenticator';

describe('auth', function () {
  describe('hasScope', function () {
    it('lets write imply read and admin imply everything', function () {
      expect(hasScope({ name: 'w', scopes: ['write'] }, 'read')).to.equal(true);
      expect(hasScope({ name: 'w', scopes: ['write'] }, 'admin')).to.equal(false);
      expect(hasScope({ name: 'r', scopes: ['read'] }, 'write')).to.equal(false);
      expect(hasScope({ name: 'a', scopes: ['admin'] }, 'write')).to.equal(true);
    });
  });

  describe('TokenAuthenticator', function () {
    it('resolves static tokens and rejects unknown ones without a store', async function () {
      const auth = new TokenAuthenticator([{ name: 'ci', token: 'ci-token-0123456789', scopes: ['read'] }], null);
      const principal = await auth.authenticate('ci-token-0123456789');
      expect(principal).to.deep.include({ name: 'ci', scopes: ['read'] });
      // The audit log's fingerprint: a prefix of the token's SHA-256, never the token.
      expect(principal?.id).to.match(/^[0-9a-f]{12}$/);
      expect(principal?.id).to.not.include('ci-token');
      expect(await auth.authenticate('ci-token-012345678')).to.equal(null);
    });
  });
});
