// A real OpenID Connect provider (node-oidc-provider) issuing RS256 JWT access tokens with
// `scope` through the client_credentials grant. Usage: node provider.mjs PORT
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const audience = process.argv[3] || 'https://contacts.test';

const provider = new Provider(issuer, {
  scopes: ['openid', 'read:contacts', 'write:contacts', 'delete:contacts'],
  clients: [{
    client_id: 'scopegate-test',
    client_secret: 'scopegate-test-secret-0123456789abcdef',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: 'read:contacts write:contacts delete:contacts',
  }],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
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
