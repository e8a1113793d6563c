/**
 * Development JWTs in UAA's shape (`sf token issue`, like `uaac token client get`): HS256 with the
 * secret control verifies with, the CF scopes as a `scope` array, `iss`, `iat`, `exp`, `jti`.
 */
import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';

export interface DevJwtRequest {
  secret: Uint8Array;
  issuer: string;
  scopes: readonly string[];
  ttlSeconds: number;
  /** @default 'sf-dev' (UAA's client_id, also the token's `sub`) */
  clientId?: string;
  audience?: string;
}

export async function issueDevJwt(req: DevJwtRequest): Promise<string> {
  const clientId = req.clientId ?? 'sf-dev';
  const jwt = new SignJWT({ scope: [...req.scopes], client_id: clientId, cid: clientId })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuer(req.issuer)
    .setSubject(clientId)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime(`${req.ttlSeconds}s`);
  if (req.audience) jwt.setAudience(req.audience);
  return jwt.sign(req.secret);
}
