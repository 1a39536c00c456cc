// A real OpenID Connect provider (node-oidc-provider) issuing RS256 JWT access tokens with
// `scope` through the client_credentials grant. Usage: node provider.mjs PORT [AUDIENCE] [dpop-nonce|mtls]
//
// DPoP (RFC 9449) is on: a token request carrying a DPoP proof gets a token bound to the proof's
// key (`cnf.jkt`, token_type DPoP); one without gets a plain bearer token. With `dpop-nonce`,
// the token endpoint also requires a nonce it issued (400 use_dpop_nonce + DPoP-Nonce first).
// With `mtls`, tokens are certificate-bound (RFC 8705, `cnf["x5t#S256"]`): the client's
// certificate reaches the provider as a TLS-terminating front would pass it, PEM in base64 in
// `X-Client-Cert`.
import { randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const audience = process.argv[3] || 'https://contacts.test';
const dpopNonce = process.argv[4] === 'dpop-nonce';
const mtls = process.argv[4] === 'mtls';

const provider = new Provider(issuer, {
  scopes: ['openid', 'read:contacts', 'write:contacts', 'delete:contacts'],
  clients: [{
    client_id: 'scopegate-test',
    client_secret: 'scopegate-test-secret-0123456789abcdef',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: 'read:contacts write:contacts delete:contacts',
    ...(mtls ? { tls_client_certificate_bound_access_tokens: true } : {}),
  }],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: {
      enabled: true,
      ...(dpopNonce ? { nonceSecret: randomBytes(32), requireNonce: () => true } : {}),
    },
    mTLS: {
      enabled: mtls,
      certificateBoundAccessTokens: mtls,
      getCertificate(ctx) {
        const pem = ctx.get('x-client-cert');
        return pem ? Buffer.from(pem, 'base64').toString('utf8') : undefined;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'read:contacts write:contacts delete:contacts',
        audience,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
provider.proxy = false;
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
