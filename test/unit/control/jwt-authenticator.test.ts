import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import type { Authenticator } from '../../../control/api/auth';
import { JwtAuthenticator } from '../../../control/api/jwt-authenticator';
import { issueDevJwt } from '../../../control/api/jwt-issue';

const ISSUER = 'https://uaa.example.com/oauth/token';
const SECRET = 'a-development-secret-of-at-least-32-bytes';

/** Stands in for the opaque-token authenticator: knows one token. */
const opaque: Authenticator = {
  authenticate: async (t) => (t === 'sf_opaque_token' ? { name: 'ci', scopes: ['read'] } : null),
};

describe('JwtAuthenticator', function () {
  let dir: string;
  let privateKey: CryptoKey;
  let pemFile: string;
  let jwksFile: string;
  let secretFile: string;

  const rs256 = (claims: JWTPayload, opts: { kid?: string; exp?: string | number; iss?: string } = {}) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: opts.kid ?? 'key-1' })
      .setIssuer(opts.iss ?? ISSUER)
      .setIssuedAt()
      .setExpirationTime(opts.exp ?? '10m')
      .sign(privateKey);

  before(async function () {
    dir = mkdtempSync(join(tmpdir(), 'sf-jwt-'));
    const pair = await generateKeyPair('RS256', { extractable: true });
    privateKey = pair.privateKey;
    pemFile = join(dir, 'uaa.pem');
    writeFileSync(pemFile, await exportSPKI(pair.publicKey));
    jwksFile = join(dir, 'jwks.json');
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'key-1', alg: 'RS256', use: 'sig' };
    writeFileSync(jwksFile, JSON.stringify({ keys: [jwk] }));
    secretFile = join(dir, 'secret');
    writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  describe('authenticate', function () {
    it('accepts an RS256 token from the PEM key and maps CF scopes onto ours', async function () {
      const auth = await JwtAuthenticator.create({ publicKeyFile: pemFile, issuer: ISSUER }, opaque);
      const token = await rs256({ scope: ['routing.routes.read', 'routing.routes.write'], client_id: 'tcp_emitter' });
      const p = await auth.authenticate(token);
      expect(p).to.include({ name: 'jwt:tcp_emitter' });
      expect(p?.scopes).to.have.members(['read', 'write']);
      expect(p?.cfScopes).to.deep.equal(['routing.routes.read', 'routing.routes.write']);
      expect(p?.id).to.match(/^[0-9a-f]{12}$/);
    });

    it('gives routing.router_groups.write the admin scope and takes a space-separated scope string', async function () {
      const auth = await JwtAuthenticator.create({ jwksFile, issuer: ISSUER }, opaque);
      const p = await auth.authenticate(await rs256({ scope: 'routing.router_groups.write openid', sub: 'op' }));
      expect(p?.scopes).to.deep.equal(['admin']);
      expect(p?.cfScopes).to.deep.equal(['routing.router_groups.write', 'openid']);
    });

    it('refuses an expired token, another issuer, an unknown kid and a token signed with another key', async function () {
      const auth = await JwtAuthenticator.create({ jwksFile, issuer: ISSUER }, opaque);
      const scope = ['routing.routes.read'];
      const past = Math.floor(Date.now() / 1000) - 3600;
      expect(await auth.authenticate(await rs256({ scope }, { exp: past }))).to.equal(null);
      expect(await auth.authenticate(await rs256({ scope }, { iss: 'https://evil.example.com' }))).to.equal(null);
      expect(await auth.authenticate(await rs256({ scope }, { kid: 'key-2' }))).to.equal(null);
      const other = await generateKeyPair('RS256');
      const forged = await new SignJWT({ scope })
        .setProtectedHeader({ alg: 'RS256', kid: 'key-1' })
        .setIssuer(ISSUER)
        .setExpirationTime('10m')
        .sign(other.privateKey);
      expect(await auth.authenticate(forged)).to.equal(null);
    });

    it('refuses a token without exp, and alg none or HS256 against an RS256 key', async function () {
      const auth = await JwtAuthenticator.create({ publicKeyFile: pemFile, issuer: ISSUER }, opaque);
      const noExp = await new SignJWT({ scope: ['routing.routes.read'] })
        .setProtectedHeader({ alg: 'RS256' })
        .setIssuer(ISSUER)
        .sign(privateKey);
      expect(await auth.authenticate(noExp)).to.equal(null);
      const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const payload = b64({ scope: ['routing.routes.write'], iss: ISSUER, exp: Math.floor(Date.now() / 1000) + 600 });
      expect(await auth.authenticate(`${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`)).to.equal(null);
      // The classic confusion: the public key's PEM used as an HMAC secret.
      const { readFileSync } = await import('node:fs');
      const hs = await new SignJWT({ scope: ['routing.routes.write'] })
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuer(ISSUER)
        .setExpirationTime('10m')
        .sign(new TextEncoder().encode(readFileSync(pemFile, 'utf8')));
      expect(await auth.authenticate(hs)).to.equal(null);
    });

    it('verifies the development tokens sf token issue mints with the HS256 secret', async function () {
      const auth = await JwtAuthenticator.create({ hs256SecretFile: secretFile, issuer: 'sf-dev' }, opaque);
      const token = await issueDevJwt({
        secret: new TextEncoder().encode(SECRET),
        issuer: 'sf-dev',
        scopes: ['routing.router_groups.read'],
        ttlSeconds: 60,
      });
      expect(await auth.authenticate(token)).to.deep.include({
        name: 'jwt:sf-dev',
        scopes: ['read'],
        cfScopes: ['routing.router_groups.read'],
      });
    });

    it('hands tokens that are not JWTs to the opaque authenticator', async function () {
      const auth = await JwtAuthenticator.create({ publicKeyFile: pemFile, issuer: ISSUER }, opaque);
      expect(await auth.authenticate('sf_opaque_token')).to.deep.equal({ name: 'ci', scopes: ['read'] });
      expect(await auth.authenticate('sf_unknown')).to.equal(null);
    });
  });

  describe('create', function () {
    it('refuses no key or two keys, a short HS256 secret and a missing file, naming the option', async function () {
      const short = join(dir, 'short');
      writeFileSync(short, 'too-short');
      const cases = [
        { issuer: ISSUER },
        { issuer: ISSUER, publicKeyFile: pemFile, jwksFile },
        { issuer: ISSUER, hs256SecretFile: short },
        { issuer: ISSUER, publicKeyFile: join(dir, 'missing.pem') },
        { issuer: '', publicKeyFile: pemFile },
      ];
      for (const c of cases) {
        let err: unknown;
        await JwtAuthenticator.create(c, opaque).catch((e: unknown) => (err = e));
        expect((err as { code?: string })?.code, JSON.stringify(c)).to.equal('SF_ERR_INVALID_OPTION');
      }
    });
  });
});
