/**
 * The platform CA: a certificate authority of the platform's own (or the operator's) that issues
 * the certificates routers, engines and control present, so TLS is on by default and a client
 * needs one file, the CA certificate, to verify every endpoint.
 *
 * Keys and certificates are made by the `openssl` CLI (OpenSSL 3: `req -x509 -CA`), never by
 * hand-written ASN.1; Node's X509Certificate only reads them back (expiry, names, issuer).
 * Private keys are written with mode 0600 and never logged; openssl writes them to a pipe, so no
 * key file ever exists with a wider mode, even for an instant.
 */
import { spawn } from 'node:child_process';
import { X509Certificate, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { ErrorCode, SfError } from './errors';

/** @default values of the platform CA */
export const DEFAULT_PLATFORM_CA_OPTIONS = {
  /** @default 3650 days a CA made by the platform is valid */
  caDays: 3650,
  /** @default 90 days an issued certificate is valid */
  certDays: 90,
  /** @default 30 days before expiry an issued certificate is renewed */
  renewBeforeDays: 30,
  /** @default 'Service Foundry platform CA' */
  caCommonName: 'Service Foundry platform CA',
} as const;

export type PlatformCaOptions = {
  -readonly [K in keyof typeof DEFAULT_PLATFORM_CA_OPTIONS]: (typeof DEFAULT_PLATFORM_CA_OPTIONS)[K];
};

/** Paths of an issued certificate (PEM, the leaf only) and its private key (PEM, mode 0600). */
export interface IssuedCertificate {
  certFile: string;
  keyFile: string;
  /** True when this call wrote a new certificate (first issue, near expiry, names changed). */
  renewed: boolean;
  notAfter: Date;
}

/** The extensions openssl adds: a CA that signs only certificates, and leaves for TLS on both ends. */
function opensslConfig(sans: string[]): string {
  const alt = sans.map((n) => (isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
  return [
    '[req]',
    'distinguished_name = dn',
    'prompt = no',
    '[dn]',
    '[ca]',
    'basicConstraints = critical,CA:TRUE,pathlen:0',
    'keyUsage = critical,keyCertSign,cRLSign',
    'subjectKeyIdentifier = hash',
    '[leaf]',
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature,keyEncipherment',
    // Both: the same certificate serves a router's listener and its client side towards engines.
    'extendedKeyUsage = serverAuth,clientAuth',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
    ...(alt ? [`subjectAltName = ${alt}`] : []),
    '',
  ].join('\n');
}

/** Runs openssl; resolves its stdout. Never logs arguments or output. */
function openssl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) =>
      reject(new SfError(ErrorCode.Certificate, `cannot run openssl (${e.message}); install OpenSSL 3`)),
    );
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else
        reject(
          new SfError(
            ErrorCode.Certificate,
            `openssl ${args[0]} failed (exit ${code}): ${Buffer.concat(err).toString('utf8').trim().split('\n')[0]}`,
          ),
        );
    });
  });
}

/**
 * Runs `openssl req` with `config` as its configuration, from a temporary file beside the CA
 * (Node's stdin pipes are sockets, which /dev/stdin cannot open).
 */
async function opensslReq(dir: string, args: string[], config: string): Promise<string> {
  const file = join(dir, `openssl-${randomBytes(4).toString('hex')}.cnf`);
  await writeFile(file, config, { mode: 0o600 });
  try {
    return await openssl(['req', ...args, '-config', file]);
  } finally {
    await rm(file, { force: true });
  }
}

/** Writes `data` to `file` through a temporary file and a rename, so readers see old or new. */
async function writeAtomic(file: string, data: string, mode: number): Promise<void> {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, data, { mode });
  await chmod(tmp, mode);
  await rename(tmp, file);
}

function newKey(): Promise<string> {
  return openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
}

/** Certificate names are file names too: letters, digits, dots, dashes and underscores. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

export class PlatformCa {
  private constructor(
    readonly certFile: string,
    readonly keyFile: string,
    readonly issuedDir: string,
    private readonly cert: X509Certificate,
    private readonly options: PlatformCaOptions,
  ) {}

  /**
   * Opens the CA in `dir` (`ca.crt`, `ca.key`), creating it on first use. With `operator`, the
   * operator's CA certificate and key are used instead (nothing is created or copied).
   */
  static async open(
    dir: string,
    options: Partial<PlatformCaOptions> = {},
    operator?: { certFile: string; keyFile: string },
  ): Promise<PlatformCa> {
    const opts: PlatformCaOptions = { ...DEFAULT_PLATFORM_CA_OPTIONS, ...options };
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const issuedDir = join(dir, 'issued');
    await mkdir(issuedDir, { recursive: true, mode: 0o700 });
    const certFile = operator?.certFile ?? join(dir, 'ca.crt');
    const keyFile = operator?.keyFile ?? join(dir, 'ca.key');
    if (!operator && !(await exists(certFile))) {
      const key = await newKey();
      await writeAtomic(keyFile, key, 0o600);
      const pem = await opensslReq(
        dir,
        [
          '-new',
          '-x509',
          '-key',
          keyFile,
          '-subj',
          `/CN=${opts.caCommonName}`,
          '-days',
          String(opts.caDays),
          '-extensions',
          'ca',
        ],
        opensslConfig([]),
      );
      await writeAtomic(certFile, pem, 0o644);
    }
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(await readFile(certFile));
    } catch (err) {
      throw new SfError(ErrorCode.Certificate, `${certFile} is not a PEM certificate: ${(err as Error).message}`);
    }
    if (!cert.ca)
      throw new SfError(ErrorCode.Certificate, `${certFile} is not a CA certificate (basicConstraints CA:TRUE)`);
    const keyMode = (await stat(keyFile).catch(() => undefined))?.mode;
    if (keyMode === undefined) throw new SfError(ErrorCode.Certificate, `CA key ${keyFile} does not exist`);
    if ((keyMode & 0o077) !== 0)
      throw new SfError(
        ErrorCode.Certificate,
        `CA key ${keyFile} is readable by others (mode ${(keyMode & 0o777).toString(8)}); chmod 600 it`,
      );
    return new PlatformCa(certFile, keyFile, issuedDir, cert, opts);
  }

  /** The CA certificate in PEM, what clients verify the platform with. */
  async pem(): Promise<string> {
    return readFile(this.certFile, 'utf8');
  }

  /**
   * The certificate `name` for `sans` (DNS names and IP addresses), issued when missing and
   * renewed when it expires within `renewBeforeDays`, when its names differ, or when another CA
   * signed it. Written as `issued/NAME.crt` and `issued/NAME.key` (0600), key first: a reader
   * that sees the new certificate with the old key fails to load the pair and keeps what it had.
   * `force`: a new key and certificate even when the current one is still good (an operator who
   * suspects the key leaked: `sf rotate-certificate`).
   */
  async ensure(name: string, sans: string[], now = new Date(), force = false): Promise<IssuedCertificate> {
    if (!NAME.test(name)) throw new SfError(ErrorCode.Certificate, `certificate name '${name}' must match ${NAME}`);
    if (sans.length === 0) throw new SfError(ErrorCode.Certificate, `certificate ${name} needs at least one name`);
    const certFile = join(this.issuedDir, `${name}.crt`);
    const keyFile = join(this.issuedDir, `${name}.key`);
    const current = await readFile(certFile).then(
      (pem) => new X509Certificate(pem),
      () => undefined,
    );
    if (!force && current && (await exists(keyFile)) && !this.needsRenewal(current, sans, now))
      return { certFile, keyFile, renewed: false, notAfter: new Date(current.validTo) };
    const key = await newKey();
    const tmpKey = `${keyFile}.${randomBytes(4).toString('hex')}.tmp`;
    await writeFile(tmpKey, key, { mode: 0o600 });
    try {
      const pem = await opensslReq(
        this.issuedDir,
        [
          '-new',
          '-x509',
          '-key',
          tmpKey,
          '-CA',
          this.certFile,
          '-CAkey',
          this.keyFile,
          '-subj',
          `/CN=${name}`,
          '-days',
          String(this.options.certDays),
          '-extensions',
          'leaf',
        ],
        opensslConfig(sans),
      );
      await rename(tmpKey, keyFile);
      await writeAtomic(certFile, pem, 0o644);
      return { certFile, keyFile, renewed: true, notAfter: new Date(new X509Certificate(pem).validTo) };
    } finally {
      await rm(tmpKey, { force: true });
    }
  }

  private needsRenewal(cert: X509Certificate, sans: string[], now: Date): boolean {
    const renewAt = new Date(cert.validTo).getTime() - this.options.renewBeforeDays * 86_400_000;
    if (now.getTime() >= renewAt) return true;
    if (!cert.checkIssued(this.cert) || !cert.verify(this.cert.publicKey)) return true;
    const have = (cert.subjectAltName ?? '').split(', ').filter(Boolean);
    if (have.length !== sans.length) return true;
    // checkIP and checkHost compare in canonical form (an IPv6 address prints expanded).
    return sans.some((n) =>
      isIP(n) ? cert.checkIP(n) === undefined : cert.checkHost(n, { subject: 'never', wildcards: false }) === undefined,
    );
  }
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}
