// A real DPoP client (panva's oauth4webapi) for scopegate's DPoP interoperability test.
// Usage: node dpop_client.mjs ISSUER RESOURCE_URL AUDIENCE
//
// Discovers ISSUER, makes an ES256 DPoP key, gets a DPoP-bound token by the client_credentials
// grant (retrying once on the provider's use_dpop_nonce), calls RESOURCE_URL with it through
// protectedResourceRequest (retrying once on scopegate's use_dpop_nonce, with the nonce the DPoP
// handle cached from the DPoP-Nonce header), calls again (the cached nonce is good: no
// challenge), then tries the same token with the Bearer scheme and replays the proof that was
// accepted first. Prints one JSON line saying what happened; exits 1 (with the error on stderr)
// on anything it did not expect to handle.
import * as oauth from 'oauth4webapi';

const [issuer, resource, audience] = process.argv.slice(2);
if (!issuer || !resource || !audience) {
  console.error('usage: node dpop_client.mjs ISSUER RESOURCE_URL AUDIENCE');
  process.exit(2);
}

const insecure = { [oauth.allowInsecureRequests]: true }; // plain http on 127.0.0.1
const client = { client_id: 'scopegate-test' };
const clientAuth = oauth.ClientSecretBasic('scopegate-test-secret-0123456789abcdef');

// Every request the library makes, as sent and as answered (fetch through customFetch).
const exchanges = [];
const recordingFetch = async (url, init) => {
  const response = await fetch(url, init);
  exchanges.push({ url: String(url), headers: init.headers, status: response.status });
  return response;
};
const options = (extra) => ({ ...insecure, [oauth.customFetch]: recordingFetch, ...extra });

/** `attempt()` once more when it fails with use_dpop_nonce (oauth4webapi's documented pattern). */
async function retryingOnNonce(attempt) {
  try {
    return { result: await attempt(), nonceError: null };
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err;
    return { result: await attempt(), nonceError: err };
  }
}

const wwwAuthenticate = (response) => response?.headers.get('www-authenticate') ?? null;
const jsonBody = async (response) => {
  const text = await response.text();
  try { return JSON.parse(text); } catch { return text; }
};
const claims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

// 1. Discovery.
const issuerUrl = new URL(issuer);
const as = await oauth.processDiscoveryResponse(
  issuerUrl,
  await oauth.discoveryRequest(issuerUrl, insecure),
);

// 2. The DPoP key and the handle that signs proofs and keeps nonces per origin.
const keyPair = await oauth.generateKeyPair('ES256');
const DPoP = oauth.DPoP(client, keyPair);
const jkt = await DPoP.calculateThumbprint();

// 3. A DPoP-bound token from the provider.
const grant = await retryingOnNonce(async () => oauth.processClientCredentialsResponse(
  as,
  client,
  await oauth.clientCredentialsGrantRequest(
    as,
    client,
    clientAuth,
    { scope: 'read:contacts', resource: audience },
    options({ DPoP }),
  ),
));
const tokenResponse = grant.result;
const accessToken = tokenResponse.access_token;
const tokenClaims = claims(accessToken);
const token = {
  token_type: tokenResponse.token_type,
  cnf_jkt: tokenClaims.cnf?.jkt ?? null,
  key_jkt: jkt,
  aud: tokenClaims.aud,
  scope: tokenClaims.scope,
  provider_nonce_retry: grant.nonceError !== null,
  provider_statuses: exchanges.filter((e) => e.url === as.token_endpoint).map((e) => e.status),
};

// 4. scopegate, with DPoP: the first proof has no nonce (none cached for its origin yet).
const url = new URL(resource);
const before = exchanges.length;
const call = await retryingOnNonce(() => oauth.protectedResourceRequest(
  accessToken, 'GET', url, undefined, undefined, options({ DPoP }),
));
const sent = exchanges.slice(before);
const challenge = call.nonceError;
const first = challenge && {
  status: challenge.response.status,
  error: challenge.cause.find((c) => c.scheme === 'dpop')?.parameters.error ?? null,
  www_authenticate: wwwAuthenticate(challenge.response),
  dpop_nonce: challenge.response.headers.get('dpop-nonce'),
  body: await jsonBody(challenge.response),
  proof_nonce: claims(sent[0].headers.dpop).nonce ?? null,
};
const accepted = sent[sent.length - 1];
const retry = {
  status: call.result.status,
  dpop_nonce: call.result.headers.get('dpop-nonce'),
  body: await jsonBody(call.result),
  proof_nonce: claims(accepted.headers.dpop).nonce ?? null,
};

// 5. A second call: the nonce cached from the last answer is good, no challenge this time.
const again = await oauth.protectedResourceRequest(
  accessToken, 'GET', url, undefined, undefined, options({ DPoP }),
);
const secondCall = {
  status: again.status,
  proof_nonce: claims(exchanges[exchanges.length - 1].headers.dpop).nonce ?? null,
  body: await jsonBody(again),
};

// 6. The same token with the Bearer scheme (no proof): a bound token must not be downgraded.
let bearer;
try {
  const response = await oauth.protectedResourceRequest(
    accessToken, 'GET', url, undefined, undefined, options({}),
  );
  bearer = {
    status: response.status,
    error: null,
    dpop_nonce: response.headers.get('dpop-nonce'),
    body: await jsonBody(response),
  };
} catch (err) {
  if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err;
  bearer = {
    status: err.response.status,
    error: err.cause.map((c) => c.parameters.error).find(Boolean) ?? null,
    www_authenticate: wwwAuthenticate(err.response),
    dpop_nonce: err.response.headers.get('dpop-nonce'),
    body: await jsonBody(err.response),
  };
}
const bearerSent = exchanges[exchanges.length - 1].headers;
bearer.authorization_scheme = bearerSent.authorization.split(' ')[0];
bearer.sent_dpop = 'dpop' in bearerSent;

// 7. The accepted request again, byte for byte: same Authorization, same DPoP proof.
const replayed = await fetch(url, {
  headers: { authorization: accepted.headers.authorization, dpop: accepted.headers.dpop },
});
const replay = {
  status: replayed.status,
  www_authenticate: wwwAuthenticate(replayed),
  dpop_nonce: replayed.headers.get('dpop-nonce'),
  body: await jsonBody(replayed),
};

console.log(JSON.stringify({
  token, nonce_retried: challenge !== null, first, retry, second_call: secondCall, bearer, replay,
}));
